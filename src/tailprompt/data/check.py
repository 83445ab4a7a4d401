"""Layout validation behind `tailprompt data check`: every problem named by its path, no traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tailprompt.data.files import UNREADABLE_IMAGE, DatasetError, open_image
from tailprompt.data.registry import load_dataset
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.schema import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class DatasetReport:
    """What `check_dataset` found: classes, images per class and split, and the problems."""

    name: str
    folder: Path | None = None
    template: str = ""
    classnames: list[str] = field(default_factory=list)
    per_class: dict[str, list[int]] = field(default_factory=dict)  # split -> images per label
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """A plain-text report: header, one line per class, then the problems (if any)."""
        lines = [f"dataset {self.name}" + (f" at {self.folder}" if self.folder else "")]
        if self.classnames:
            totals = "  ".join(f"{s} {sum(self.per_class.get(s, []))}" for s in SPLITS)
            lines += [f"template: {self.template!r}", f"{len(self.classnames)} classes; images: {totals}"]
            lines.append(f"{'label':>5}  {'train':>6} {'val':>6} {'test':>6}  class")
            for k, name in enumerate(self.classnames):
                counts = " ".join(f"{self.per_class[s][k]:>6}" for s in SPLITS)
                lines.append(f"{k:>5}  {counts}  {name}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("OK")
        return "\n".join(lines)


def check_dataset(
    name: str,
    root: str | Path | None,
    options: dict[str, Any] | None = None,
    deep: bool = False,
    progress: bool = False,
) -> DatasetReport:
    """Read dataset `name` and verify every listed image.

    Reports: a missing dataset folder, a missing or malformed split file (the reader's error), each
    listed image that is absent, each image whose header cannot be read (with `deep`, each image that
    cannot be fully decoded), and classes without training images.
    """
    report = DatasetReport(name=name)
    try:
        ds = load_dataset(name, root, options)
    except (DatasetError, ConfigError) as e:
        report.problems.append(str(e))
        return report
    report.folder, report.template, report.classnames = ds.root, ds.template, list(ds.classnames)
    for split in SPLITS:
        counts = [0] * ds.num_classes
        for it in getattr(ds, split):
            counts[it.label] += 1
        report.per_class[split] = counts
    if ds.train:
        report.problems += [
            f"class {k} ({n!r}) has no training images"
            for k, n in enumerate(ds.classnames)
            if not report.per_class["train"][k]
        ]
    report.problems += _image_problems(ds, deep, progress)
    return report


def _image_problems(ds: DatasetSplits, deep: bool, progress: bool) -> list[str]:
    items = list({it.key: it for split in SPLITS for it in getattr(ds, split)}.values())
    problems = []
    for it in tqdm(items, unit="img", desc=f"checking {ds.name}", disable=not progress):
        problem = _image_problem(ds, it, deep)
        if problem:
            problems.append(problem)
    return problems


def _image_problem(ds: DatasetSplits, item: Item, deep: bool) -> str | None:
    if ds.root is None:  # generated images: only a full render can fail
        if deep:
            try:
                ds.load_image(item)
            except Exception as e:  # a generator bug is still a finding, not a crash
                return f"{item.key}: cannot render ({e})"
        return None
    path = ds.root / item.key
    if not path.is_file():
        return f"{path}: listed image is {'a folder, expected an image file' if path.is_dir() else 'missing'}"
    try:
        with open_image(path) as img:
            if deep:
                img.load()
    except UNREADABLE_IMAGE as e:
        return f"{path}: unreadable image ({' '.join(str(e).split())[:200]})"
    return None
