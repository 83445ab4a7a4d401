"""Dataset registry: name -> loader `(root, options) -> DatasetSplits`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailprompt.data.types import DatasetSplits
from tailprompt.registry import Registry

DatasetLoader = Callable[[Path | None, dict[str, Any]], DatasetSplits]

DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(name: str, root: str | Path | None = None, options: dict[str, Any] | None = None) -> DatasetSplits:
    """Read dataset `name` from `root` (the folder holding the dataset folders, CoOp's DATA/)."""
    return DATASETS.get(name)(Path(root) if root is not None else None, dict(options or {}))
