"""Datasets (CoOp/Dassl readers), sampling and the image-feature cache.

Importing the package registers every reader in `DATASETS`; see `readers.py` for the table of specs. The
embedded world (`tailprompt.world`, a layer above this one) registers its datasets here when imported.
"""

from tailprompt.data import readers  # noqa: F401  (registers the benchmark readers)
from tailprompt.data.files import DatasetError
from tailprompt.data.registry import DATASETS, load_dataset
from tailprompt.data.types import DatasetSplits, Item

__all__ = ["DATASETS", "DatasetError", "DatasetSplits", "Item", "load_dataset"]
