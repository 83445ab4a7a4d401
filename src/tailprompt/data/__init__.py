"""Datasets (CoOp/Dassl readers, the embedded world), sampling and the image-feature cache.

Importing the package registers every reader in `DATASETS`; see `readers.py` for the table of specs.
"""

import importlib.util

from tailprompt.data import readers  # noqa: F401  (registers the benchmark readers)
from tailprompt.data.files import DatasetError
from tailprompt.data.registry import DATASETS, load_dataset
from tailprompt.data.types import DatasetSplits, Item

# The procedural world (another module) registers its datasets too; import it when it exists.
if importlib.util.find_spec("tailprompt.data.world") is not None:
    from tailprompt.data import world  # noqa: F401

__all__ = ["DATASETS", "DatasetError", "DatasetSplits", "Item", "load_dataset"]
