"""Dataset readers for the CoOp/Dassl folder layout: one declarative spec per dataset, one table.

A `DatasetSpec` says where a dataset lives under the data root (CoOp's `DATA/`), where its images
are, which split file it reads, how class names are fixed up and which zero-shot template it uses.
The `source` field names one of a handful of split readers (`SOURCES`); everything else is data.
`DATASETS` (the registry in `tailprompt.data.registry`) maps each name to `spec.load`.

Behaviour follows `KaiyangZhou/CoOp:datasets/*.py` (peers.md §3.1):
* class names come from the split file's third column (Dassl's label -> name map); the raw-file
  readers reproduce the fixes CoOp applied when it wrote those files (EuroSAT/Caltech renames,
  SUN397 reversed path parts, Pets lower-cased breed, Cars year moved to the front, UCF101
  CamelCase split with `_`, Flowers `cat_to_name.json`, Aircraft `variants.txt`);
* ImageNet: labels by sorted wnid folder, names from `classnames.txt`, val = test = ImageNet val;
* ImageNet-Sketch/-A/-R: labels by sorted wnid folder of the variant (200 classes for -A/-R);
  ImageNet-V2: label = folder index, name = that line of `classnames.txt`; all four are test-only.

The three real long-tailed benchmarks (ImageNet-LT, Places-LT, iNaturalist 2018) read the OLTR /
classifier-balancing image lists, one `relative/path label` per line, as LIFT does
(`shijxcs/LIFT:datasets/*`; calibration_and_longtail.md §2.1-2.3): labels are the lists' labels, names
come from `classnames.txt` (label = line index) or iNat's official `categories.json` (label = `id`).

`Item.key` is the image path relative to the dataset folder (e.g. `2750/Forest/Forest_1.jpg` for
EuroSAT), which is what `fewshot_ids` files and `tailprompt data sample --json` record.

Where the reference falls back to a *random* split when its `split_zhou_*.json` is missing (and writes
it into the dataset folder), we require the json by default, because a fresh random split is not
the benchmark split; the option `generate_split: true` builds a deterministic split (seeded by
`split_seed`) with the reference's proportions instead, without writing anything.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailprompt.data.files import (
    IMAGE_SUFFIXES,
    DatasetError,
    Duplicates,
    FileImages,
    image_files,
    image_files_below,
    numbered_lines,
    parse_label,
    read_json,
    read_text,
    relative_path,
    require_dir,
    require_file,
    subdirs,
)
from tailprompt.data.registry import DATASETS
from tailprompt.data.seeding import derived_rng
from tailprompt.data.templates import ENSEMBLE_TEMPLATES, TEMPLATES, is_template
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.schema import from_dict

SPLITS = ("train", "val", "test")

Entry = tuple[str, int, str]  # (path relative to the spec's image_dir, label, class name)
RawSplits = dict[str, list[Entry]]


@dataclass
class ReaderOptions:
    """Per-run reader options (`data.options` in a run config, `--option k=v` on the command line)."""

    split_file: str | None = None  # override the split file (json; CSV for imagefolder), relative to the dataset folder
    generate_split: bool = False  # no split json: build a deterministic split from the raw files instead
    split_seed: int = 0  # seed of a generated split
    template: str | None = None  # override the zero-shot template (must contain one "{}")
    folder: str | None = None  # dataset folder under root (default: the spec's; imagefolder: root itself)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that distinguishes one benchmark reader from another.

    Attributes:
        name: registry name, spelled as CoOp's config files (`oxford_pets`, `imagenet_a`, ...).
        folder: dataset folder under the data root.
        image_dir: folder (relative to `folder`) that split-file paths are relative to.
        source: key into `SOURCES`, the function that reads the splits.
        template: zero-shot template (`CoOp:trainers/zsclip.py`).
        split_file: CoOp's `split_zhou_*.json`, relative to `folder`, for `source="split_json"`.
        fallback: key into `SOURCES` used with `generate_split` when `split_file` is absent.
        raw_files: what the fallback reads, for error messages.
        renames: folder name -> class name, applied by folder-scanning fallbacks.
        ignored: folder names a folder scan skips.
        test_only: the dataset only has a test split (ImageNet variants).
        lists: split -> OLTR image list (`relative/path label` per line, paths relative to `folder`)
            for `source="oltr_lists"`; a split without a list is empty.
        names_file: label -> class name file of `source="oltr_lists"`, relative to `folder`:
            `*.txt` with `key class name` per line (label = line index) or iNat's `categories.json`.
    """

    name: str
    folder: str
    image_dir: str
    source: str
    template: str
    split_file: str | None = None
    fallback: str | None = None
    raw_files: str = ""
    renames: Mapping[str, str] = field(default_factory=dict, hash=False)
    ignored: tuple[str, ...] = ()
    test_only: bool = False
    lists: Mapping[str, str] = field(default_factory=dict, hash=False)
    names_file: str = ""

    def load(self, root: Path | None, options: dict[str, Any]) -> DatasetSplits:
        """Read the dataset under `root` (CoOp's DATA/); layout errors raise `DatasetError`."""
        opts = from_dict(ReaderOptions, options, where="data.options")
        if opts.template is not None:
            check_template(opts.template, f"{self.name} options.template")
        if root is None:
            raise DatasetError(f"dataset {self.name!r} needs a root: the folder holding the dataset folders")
        try:
            folder = dataset_folder(self, Path(root).expanduser(), opts)
            require_dir(folder / self.image_dir, f"images of {self.name}")
            raw = SOURCES[self.source](self, folder, opts)
            return _assemble(self, folder, raw, opts)
        except OSError as e:  # an unreadable file or folder no reader check anticipated: name it
            raise DatasetError(f"{e.filename or root}: cannot read ({e.strerror or e}; reading {self.name})") from None


def check_template(template: str, where: str) -> None:
    """A zero-shot template must hold exactly one `{}` and no other format field."""
    if not is_template(template):
        raise DatasetError(f"{where}: expected one '{{}}' (and no other braces), got {template!r}")


def dataset_folder(spec: DatasetSpec, root: Path, opts: ReaderOptions) -> Path:
    """The dataset's folder under `root`; a missing one is a `DatasetError` naming it."""
    if spec.source == "imagefolder":
        folder = root / opts.folder if opts.folder else root
        what = "dataset folder of imagefolder, holding one folder of images per class"
    else:
        folder = root / (opts.folder or spec.folder)
        what = f"dataset folder of {spec.name}; expected <root>/{opts.folder or spec.folder}"
    return require_dir(folder, what)


# ---------------------------------------------------------------------------------------------------
# Assembling items from (path, label, name) entries


def _assemble(spec: DatasetSpec, folder: Path, raw: RawSplits, opts: ReaderOptions) -> DatasetSplits:
    classnames = label_names(f"{folder} ({spec.name})", raw)
    splits = {s: [_item(spec, path, label, name) for path, label, name in raw.get(s, [])] for s in SPLITS}
    images = FileImages(folder)
    template = opts.template or spec.template
    ensemble = ENSEMBLE_TEMPLATES if spec.name == "imagenet" else (*ENSEMBLE_TEMPLATES, template)
    return DatasetSplits(
        name=spec.name,
        classnames=classnames,
        template=template,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        root=images.folder,
        load_image=images.load,
        image_identity=images.identity,
        templates=ensemble,
    )


def _item(spec: DatasetSpec, path: str, label: int, name: str) -> Item:
    key = posixpath.join(spec.image_dir, path) if spec.image_dir else path
    return Item(key=key, label=label, classname=name)


def label_names(where: str, raw: RawSplits) -> list[str]:
    """Label -> name over all splits (Dassl reads it from train); labels must be exactly 0..K-1.

    `where` (the file or folder the labels come from) starts every error.
    """
    names: dict[int, str] = {}
    for split, entries in raw.items():
        for path, label, name in entries:
            known = names.setdefault(label, name)
            if known != name:
                raise DatasetError(
                    f"{where}: label {label} has two class names, {known!r} and {name!r} ({split}: {path})"
                )
    if not names:
        raise DatasetError(f"{where}: no images found")
    top = max(names)
    if top >= len(names):  # a gap; the first ones are found without building 0..top (a stray label may be huge)
        missing: list[int] = []
        k = 0
        while len(missing) < 10 and k <= top:
            if k not in names:
                missing.append(k)
            k += 1
        raise DatasetError(f"{where}: labels must be 0..{top} without gaps; missing {missing}")
    return [names[k] for k in range(len(names))]


def _every_class_has_images(names_path: Path, names: list[str], raw: RawSplits, lists: str) -> None:
    """Every class of a names file must have an image in some list, so a truncated list cannot silently shrink
    (or, with a gap, shift) the label space."""
    used = {label for entries in raw.values() for _, label, _ in entries}
    unused = [k for k in range(len(names)) if k not in used]
    if unused:
        raise DatasetError(
            f"{names_path}: {len(unused)} of {len(names)} classes have no image in {lists} "
            f"(first: {[names[k] for k in unused[:5]]})"
        )


def _list_entries(
    path: Path, what: str, parse: Callable[[str, str], Entry | None], key: Callable[[Entry], Any] = lambda e: e[0]
) -> list[Entry]:
    """Entries of a line-based list: `parse(line, "file:line")` gives one entry (None: skip the line).

    Blank lines, `#` comments, CRLF, a BOM and surrounding whitespace are accepted (`numbered_lines`); a
    repeated entry (same `key`) is a `DatasetError` naming both lines.
    """
    seen = Duplicates("entry")
    out: list[Entry] = []
    for n, line in numbered_lines(path, what):
        where = f"{path}:{n}"
        entry = parse(line, where)
        if entry is not None:
            seen.add(key(entry), where, f"line {n}")
            out.append(entry)
    return out


def _names_list(path: Path, what: str) -> list[str]:
    """One name per line (`variants.txt`, SUN397's `ClassName.txt`); a repeated name names both lines."""
    seen = Duplicates("class")
    out = []
    for n, line in numbered_lines(path, what):
        seen.add(line, f"{path}:{n}", f"line {n}")
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------------
# Split sources


def _split_file_path(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> Path:
    name = opts.split_file or spec.split_file
    assert name is not None
    path = Path(name).expanduser()
    return path if path.is_absolute() else folder / path


def read_split_json(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """CoOp's `split_zhou_*.json`: `{"train": [[relpath, label, classname], ...], "val": .., "test": ..}`."""
    path = _split_file_path(spec, folder, opts)
    if not path.exists():
        if opts.generate_split and spec.fallback:
            return SOURCES[spec.fallback](spec, folder, opts)
        hint = (
            f"; or set the reader option generate_split=true to build a deterministic split from "
            f"{spec.raw_files} (not the published benchmark split)"
            if spec.fallback
            else ""
        )
        raise DatasetError(
            f"{path}: missing split file (CoOp's split for {spec.name}, linked from CoOp's DATASETS.md){hint}"
        )
    shape = "an object with lists 'train', 'val', 'test' of [relative path, label, class name]"
    data = read_json(path, f"CoOp's split file, {shape}", malformed="malformed split file, not valid JSON")
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise DatasetError(f"{path}: malformed split file, expected an object with lists 'train', 'val', 'test'")
    inside = str(folder / spec.image_dir)
    raw: RawSplits = {}
    for s in SPLITS:
        seen = Duplicates("image")
        raw[s] = []
        for i, e in enumerate(data[s]):
            entry = _json_entry(path, s, i, e, inside)
            seen.add(entry[0], f"{path}: malformed split file, {s}[{i}]", f"{s}[{seen.seen.get(entry[0], i)}]")
            raw[s].append(entry)
    label_names(f"{path}: malformed split file", raw)
    return raw


def _json_entry(path: Path, split: str, index: int, entry: Any, inside: str) -> Entry:
    where = f"{path}: malformed split file, {split}[{index}]"
    if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
        raise DatasetError(f"{where}: expected [relative path, label, class name], got {entry!r}"[:400])
    rel, label, name = entry
    if not isinstance(rel, str):
        raise DatasetError(f"{where}: expected a relative image path, got {rel!r}"[:400])
    relative_path(rel, where, inside)
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise DatasetError(f"{where}: expected a label >= 0, got {label!r}"[:400])
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"{where}: expected a class name, got {name!r}"[:400])
    return rel, label, name


def _three_way(spec: DatasetSpec, seed: int, group: str, paths: list[str], where: Path) -> tuple[list, list, list]:
    """50% train / 20% val / 30% test of one class, in a seeded order (`DTD.read_and_split_data`)."""
    order = derived_rng("split", seed, spec.name, group).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    n_train, n_val = round(len(paths) * 0.5), round(len(paths) * 0.2)
    if n_train == 0 or n_val == 0 or len(paths) - n_train - n_val == 0:
        raise DatasetError(
            f"{where}: {len(paths)} images, too few for a 50/20/30 train/val/test split (expected at least 3)"
        )
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


def _split_trainval(spec: DatasetSpec, seed: int, trainval: list[Entry], where: Path) -> tuple[list, list]:
    """Per label, round(20%) of trainval to val in a seeded order (`OxfordPets.split_trainval`)."""
    by_label: dict[int, list[Entry]] = {}
    for entry in trainval:
        by_label.setdefault(entry[1], []).append(entry)
    train: list[Entry] = []
    val: list[Entry] = []
    for label, entries in by_label.items():
        n_val = round(len(entries) * 0.2)
        if n_val == 0:
            raise DatasetError(
                f"{where}: class {entries[0][2]!r} has {len(entries)} images, too few for a val split "
                "(expected at least 3)"
            )
        order = derived_rng("split", seed, spec.name, label).permutation(len(entries))
        val += [entries[i] for i in order[:n_val]]
        train += [entries[i] for i in order[n_val:]]
    return train, val


def read_class_folders(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """One folder per class under image_dir, sorted; 50/20/30 per class (DTD, EuroSAT, Caltech, Food)."""
    image_dir = folder / spec.image_dir
    raw: RawSplits = {s: [] for s in SPLITS}
    categories = [c for c in subdirs(image_dir) if c not in spec.ignored]
    if not categories:
        raise DatasetError(f"{image_dir}: no class folders; expected {image_dir}/<class>/<image>.jpg")
    for label, category in enumerate(categories):
        name = spec.renames.get(category, category)
        paths = [f"{category}/{f}" for f in image_files(image_dir / category)]
        for split, part in zip(SPLITS, _three_way(spec, opts.split_seed, category, paths, image_dir / category)):
            raw[split] += [(p, label, name) for p in part]
    return raw


def read_pets_annotations(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`annotations/{trainval,test}.txt`: `Breed_Name_12 CLASS-ID SPECIES BREED-ID`; name = lower breed."""
    images = str(folder / spec.image_dir)
    expected = "'IMAGE CLASS-ID SPECIES BREED-ID' (IMAGE like Breed_Name_12, CLASS-ID from 1)"

    def parse(line: str, where: str) -> Entry:
        parts = line.split()
        if len(parts) != 4 or "_" not in parts[0].strip("_"):
            raise DatasetError(f"{where}: expected {expected}, got {line!r}")
        stem = relative_path(parts[0], where, images)
        breed = "_".join(stem.split("_")[:-1]).lower()
        return f"{stem}.jpg", parse_label(parts[1], where, 1, None, "CLASS-ID"), breed

    def read(name: str) -> list[Entry]:
        return _list_entries(folder / "annotations" / name, f"Oxford-IIIT Pets annotation list, {expected}", parse)

    trainval, test = read("trainval.txt"), read("test.txt")
    raw = {"trainval": trainval, "test": test}
    label_names(f"{folder / 'annotations'}/{{trainval,test}}.txt", raw)
    train, val = _split_trainval(spec, opts.split_seed, trainval, folder / "annotations/trainval.txt")
    return {"train": train, "val": val, "test": test}


def read_sun397_lists(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`ClassName.txt`, `Training_01.txt`, `Testing_01.txt`; name = path parts after the letter, reversed."""
    names_path = folder / "ClassName.txt"
    classes = [c.lstrip("/") for c in _names_list(names_path, "SUN397 class list, one '/a/abbey' per line")]
    cname2lab = {c: i for i, c in enumerate(classes)}
    images = str(folder / spec.image_dir)

    def parse(line: str, where: str) -> Entry:
        if len(line.split()) != 1:
            raise DatasetError(f"{where}: expected one image path like '/a/abbey/sun_x.jpg', got {line!r}")
        rel = relative_path(line.lstrip("/"), where, images)
        cdir = posixpath.dirname(rel)
        if cdir not in cname2lab:
            raise DatasetError(f"{where}: class folder {cdir!r} is not in {names_path}")
        return rel, cname2lab[cdir], " ".join(cdir.split("/")[1:][::-1])

    def read(name: str) -> list[Entry]:
        return _list_entries(folder / name, "SUN397 partition list, one '/a/abbey/sun_x.jpg' per line", parse)

    trainval, test = read("Training_01.txt"), read("Testing_01.txt")
    _every_class_has_images(names_path, classes, {"trainval": trainval, "test": test},
                            f"{folder / 'Training_01.txt'}, {folder / 'Testing_01.txt'}")  # fmt: skip
    train, val = _split_trainval(spec, opts.split_seed, trainval, folder / "Training_01.txt")
    return {"train": train, "val": val, "test": test}


def ucf101_classname(action: str) -> str:
    """`ApplyEyeMakeup` -> `Apply_Eye_Makeup` (`CoOp:datasets/ucf101.py`)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def read_ucf101_lists(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`; mid-frame jpgs under the renamed action."""
    lists = folder / "ucfTrainTestlist"
    index_path = lists / "classInd.txt"
    cname2lab: dict[str, int] = {}
    by_index: dict[int, str] = {}
    for n, line in numbered_lines(index_path, "UCF101 class index, 'INDEX ActionName' per line"):
        where = f"{index_path}:{n}"
        parts = line.split()
        if len(parts) != 2 or not ucf101_classname(parts[1]):
            raise DatasetError(f"{where}: expected 'INDEX ActionName', got {line!r}")
        label = parse_label(parts[0], where, 1, None, "class INDEX")
        if label in by_index or parts[1] in cname2lab:
            raise DatasetError(f"{where}: index or action of {line!r} appears twice")
        cname2lab[parts[1]], by_index[label] = label, parts[1]
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise DatasetError(f"{index_path}: class indices must be 1..{len(by_index)}; missing {missing[0] + 1}")
    images = str(folder / spec.image_dir)

    def parse(line: str, where: str) -> Entry:
        parts = line.split()
        video = parts[0]
        if len(parts) > 2 or video.count("/") != 1 or video.split("/")[0] not in cname2lab:
            raise DatasetError(f"{where}: expected 'Action/v_Action_gXX_cXX.avi [INDEX]' (Action in {index_path}), "
                               f"got {line!r}")  # fmt: skip
        relative_path(video, where, images)
        action, filename = video.split("/")
        if len(parts) == 2 and parse_label(parts[1], where, 1, len(cname2lab), "class INDEX") != cname2lab[action]:
            raise DatasetError(f"{where}: index {parts[1]}, but {index_path} gives {action} {cname2lab[action] + 1}")
        renamed = ucf101_classname(action)
        return f"{renamed}/{posixpath.splitext(filename)[0]}.jpg", cname2lab[action], renamed

    def read(name: str) -> list[Entry]:
        return _list_entries(lists / name, "UCF101 split list, 'Action/v_Action_gXX_cXX.avi [INDEX]' per line", parse)

    trainval, test = read("trainlist01.txt"), read("testlist01.txt")
    names = [ucf101_classname(by_index[k]) for k in range(len(by_index))]
    _every_class_has_images(index_path, names, {"trainval": trainval, "test": test},
                            f"{lists / 'trainlist01.txt'}, {lists / 'testlist01.txt'}")  # fmt: skip
    train, val = _split_trainval(spec, opts.split_seed, trainval, lists / "trainlist01.txt")
    return {"train": train, "val": val, "test": test}


def _loadmat(path: Path, spec: DatasetSpec, opts: ReaderOptions, folder: Path, key: str, expected: str) -> Any:
    """Variable `key` of a MATLAB file; a missing, unreadable or different file is a `DatasetError` naming it."""
    require_file(path, f"{spec.name} annotation .mat")
    try:
        from scipy.io import loadmat
    except ImportError:
        json_path = _split_file_path(spec, folder, opts)
        raise DatasetError(
            f"{json_path}: missing split file; reading {path.name} instead needs scipy, "
            "which is not installed "
            f"(download CoOp's split json, or install scipy)"
        ) from None
    try:
        mat = loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise DatasetError(f"{path}: cannot read .mat file ({e}; expected {expected})") from None
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable {key!r} (expected {expected}; found {found[:10]})")
    return mat[key]


def stanford_cars_classname(meta_name: str) -> str:
    """`AM General Hummer SUV 2000` -> `2000 AM General Hummer SUV` (year to the front, as CoOp)."""
    words = meta_name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def read_cars_mat(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`devkit/cars_{train_annos,meta}.mat` and `cars_test_annos_withlabels.mat` (needs scipy)."""
    import numpy as np

    meta_path = folder / "devkit/cars_meta.mat"
    meta = np.atleast_1d(_loadmat(meta_path, spec, opts, folder, "class_names", "'class_names', the 196 car models"))
    if meta.ndim != 1 or not meta.size or not all(isinstance(m, str) and m.strip() for m in meta):
        raise DatasetError(f"{meta_path}: expected 'class_names' to be a list of car model names")
    expected = "'annotations', records with fields 'fname' and 'class' (1-based)"

    def read(image_dir: str, mat: Path) -> list[Entry]:
        annos = np.atleast_1d(_loadmat(mat, spec, opts, folder, "annotations", expected))
        fields = annos.dtype.names or ()
        if annos.ndim != 1 or not annos.size or not {"fname", "class"} <= set(fields):
            raise DatasetError(f"{mat}: expected {expected}, got fields {list(fields)}")
        out: list[Entry] = []
        seen = Duplicates("image")
        for i, rec in enumerate(annos):
            where = f"{mat}: annotations[{i}]"
            fname, label = rec["fname"], np.asarray(rec["class"]).ravel()
            if not isinstance(fname, str) or label.size != 1 or not np.issubdtype(label.dtype, np.integer):
                raise DatasetError(f"{where}: expected a file name and an integer class, got {fname!r}, {label!r}")
            rel = relative_path(f"{image_dir}/{fname}", where, str(folder))
            seen.add(rel, where, f"annotations[{i}]")
            label = parse_label(str(int(label[0])), where, 1, len(meta), "class")
            out.append((rel, label, stanford_cars_classname(str(meta[label]))))
        return out

    trainval = read("cars_train", folder / "devkit/cars_train_annos.mat")
    test = read("cars_test", folder / "cars_test_annos_withlabels.mat")
    train, val = _split_trainval(spec, opts.split_seed, trainval, folder / "devkit/cars_train_annos.mat")
    return {"train": train, "val": val, "test": test}


def read_flowers_mat(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`imagelabels.mat` (1-based label per `image_%05d.jpg`) + `cat_to_name.json`; 50/20/30 per class."""
    import numpy as np

    labels_path = folder / "imagelabels.mat"
    expected = "'labels', one 1-based class per image_%05d.jpg"
    labels = np.atleast_1d(_loadmat(labels_path, spec, opts, folder, "labels", expected))
    if labels.ndim != 1 or not labels.size or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 1:
        raise DatasetError(f"{labels_path}: expected {expected}, got {labels.dtype} {labels.shape}")
    names_path = folder / "cat_to_name.json"
    lab2cname = read_json(names_path, "Flowers102 label -> name map, an object {\"1\": \"pink primrose\", ...}")
    if not isinstance(lab2cname, dict) or not all(isinstance(v, str) and v.strip() for v in lab2cname.values()):
        raise DatasetError(f"{names_path}: expected an object {{\"1\": \"pink primrose\", ...}} (label -> name)")
    tracker: dict[int, list[str]] = {}
    for i, label in enumerate(labels):
        tracker.setdefault(int(label), []).append(f"image_{i + 1:05d}.jpg")
    raw: RawSplits = {s: [] for s in SPLITS}
    for label, paths in sorted(tracker.items()):
        if str(label) not in lab2cname:
            raise DatasetError(f"{names_path}: no name for label {label} (used by {labels_path})")
        parts = _three_way(spec, opts.split_seed, str(label), paths, labels_path)
        for split, part in zip(SPLITS, parts):
            raw[split] += [(p, label - 1, lab2cname[str(label)]) for p in part]
    label_names(str(labels_path), raw)
    return raw


def read_aircraft_lists(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """FGVC-Aircraft's official `images_variant_{train,val,test}.txt`, classes in `variants.txt` order."""
    names_path = folder / "variants.txt"
    variants = _names_list(names_path, "FGVC-Aircraft variant list, one variant per line")
    cname2lab = {c: i for i, c in enumerate(variants)}
    images = str(folder / spec.image_dir)

    def parse(line: str, where: str) -> Entry:
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{where}: expected 'IMAGE-ID variant', got {line!r}")
        image, variant = parts
        if variant not in cname2lab:
            raise DatasetError(f"{where}: variant {variant!r} is not in {names_path}")
        return f"{relative_path(image, where, images)}.jpg", cname2lab[variant], variant

    raw = {s: _list_entries(folder / f"images_variant_{s}.txt", "FGVC-Aircraft split list, 'IMAGE-ID variant' per line",
                            parse) for s in SPLITS}  # fmt: skip
    _every_class_has_images(names_path, variants, raw, str(folder / "images_variant_{train,val,test}.txt"))
    return raw


def read_name_pairs(path: Path, what: str = "ImageNet class names", key: str = "wnid") -> list[tuple[str, str]]:
    """`key class name` per line (the name may contain spaces), in file order; a repeated key names both lines."""
    out: list[tuple[str, str]] = []
    seen = Duplicates(key)
    for n, line in numbered_lines(path, f"{what}, '{key} name' per line"):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{n}: expected '{key} class name', got {line!r}")
        seen.add(parts[0], f"{path}:{n}", f"line {n}")
        out.append((parts[0], parts[1].strip()))
    return out


def read_wnid_classnames(path: Path) -> dict[str, str]:
    """`classnames.txt`: `wnid class name` per line, in file order (`ImageNet.read_classnames`)."""
    return dict(read_name_pairs(path))


def _class_images(class_dir: Path, below: bool = False) -> list[str]:
    """The images of one scanned class folder (`below`: in its sub-folders too, `image_files_below`); a folder
    without any is a `DatasetError` naming it."""
    files = image_files_below(class_dir) if below else image_files(class_dir)
    if not files:
        raise DatasetError(f"{class_dir}: class folder without images (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _wnid_entries(image_dir: Path, prefix: str, folders: list[str], labels: dict[str, int], names: dict[str, str]):
    out: list[Entry] = []
    for wnid in folders:
        rel = f"{prefix}{wnid}"
        out += [(f"{rel}/{f}", labels[wnid], names[wnid]) for f in _class_images(image_dir / rel)]
    return out


def _require_known(folders: list[str], names: Mapping[str, str], where: Path, names_file: Path) -> None:
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetError(f"{where}: folder(s) {unknown[:5]} not listed in {names_file}")


def read_imagenet_folders(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """`images/train/<wnid>/`, `images/val/<wnid>/`; labels by sorted wnid; val = test = ImageNet val."""
    names_file = folder / "classnames.txt"
    names = read_wnid_classnames(names_file)
    image_dir = folder / spec.image_dir
    train_dirs = subdirs(require_dir(image_dir / "train", "ImageNet train images, one folder per wnid"))
    val_dirs = subdirs(require_dir(image_dir / "val", "ImageNet val images, one folder per wnid"))
    if not train_dirs:
        raise DatasetError(f"{image_dir / 'train'}: no class folders; expected one folder per wnid")
    _require_known(train_dirs, names, image_dir / "train", names_file)
    labels = {w: i for i, w in enumerate(train_dirs)}
    stray = [w for w in val_dirs if w not in labels]
    if stray:
        raise DatasetError(f"{image_dir / 'val'}: folder(s) {stray[:5]} have no train folder")
    test = _wnid_entries(image_dir, "val/", val_dirs, labels, names)
    return {"train": _wnid_entries(image_dir, "train/", train_dirs, labels, names), "val": test, "test": test}


def read_wnid_test_folders(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """ImageNet-Sketch/-A/-R: one folder per wnid, labels 0.. in sorted wnid order, test only."""
    names_file = folder / "classnames.txt"
    names = read_wnid_classnames(names_file)
    image_dir = folder / spec.image_dir
    folders = [f for f in subdirs(image_dir) if f not in spec.ignored]
    if not folders:
        raise DatasetError(f"{image_dir}: no class folders; expected one folder per wnid")
    _require_known(folders, names, image_dir, names_file)
    labels = {w: i for i, w in enumerate(folders)}
    return {"train": [], "val": [], "test": _wnid_entries(image_dir, "", folders, labels, names)}


def read_index_test_folders(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """ImageNet-V2: folder `i` holds class i, the i-th line of `classnames.txt`; test only."""
    names_file = folder / "classnames.txt"
    names = list(read_wnid_classnames(names_file).values())
    image_dir = folder / spec.image_dir
    indices = {str(k) for k in range(len(names))}
    stray = [f for f in subdirs(image_dir) if f not in indices]
    if stray:
        raise DatasetError(
            f"{image_dir}: folder(s) {stray[:5]} are not class indices 0..{len(names) - 1} (lines of {names_file})"
        )
    test: list[Entry] = []
    for label, name in enumerate(names):
        class_dir = require_dir(image_dir / str(label), f"ImageNet-V2 images of class {label} ({name})")
        test += [(f"{label}/{f}", label, name) for f in _class_images(class_dir)]
    return {"train": [], "val": [], "test": test}


def read_imagefolder(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """A user's `folder/<class>/**/*.jpg`, split by an optional CSV or a seeded 50/20/30 per class.

    As torchvision's `ImageFolder`, a class's images may sit in sub-folders of its folder; hidden files and
    folders and non-image files (`Thumbs.db`, `.DS_Store`) are skipped.
    The CSV has a header with columns `path` (relative to the folder) and `split` (train/val/test) and
    optionally `class` (default: the path's first folder). Class labels follow sorted class names.
    Without a CSV, small classes keep at least one training image and may have no val/test image.
    """
    if opts.split_file:
        return _imagefolder_csv(_split_file_path(spec, folder, opts), folder)
    raw: RawSplits = {s: [] for s in SPLITS}
    classes = subdirs(folder)
    if not classes:
        raise DatasetError(f"{folder}: no class folders; expected {folder}/<class name>/<image>.jpg")
    if len(classes) == 1:  # most often the root named one level above the class folders
        raise DatasetError(f"{folder}: one class folder ({classes[0]}), a classifier needs two or more; if the "
                           f"class folders are inside it, give {folder / classes[0]} as the root")
    for label, name in enumerate(classes):
        paths = [f"{name}/{f}" for f in _class_images(folder / name, below=True)]
        order = derived_rng("split", opts.split_seed, "imagefolder", name).permutation(len(paths))
        shuffled = [paths[i] for i in order]
        n_test = min(round(len(paths) * 0.3), len(paths) - 1)
        n_val = min(round(len(paths) * 0.2), len(paths) - 1 - n_test)
        n_train = len(paths) - n_val - n_test
        parts = shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
        for split, part in zip(SPLITS, parts):
            raw[split] += [(p, label, name) for p in part]
    return raw


def _imagefolder_csv(path: Path, folder: Path) -> RawSplits:
    what = "imagefolder split CSV with a header path,split[,class]"
    text = read_text(path, what)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    seen = Duplicates("image")
    try:
        columns = set(reader.fieldnames or [])
        if not {"path", "split"} <= columns:
            raise DatasetError(f"{path}: expected a header with columns path,split[,class], got {sorted(columns)}")
        for row in reader:
            n = reader.line_num
            where = f"{path}:{n}"
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # a blank line
            if None in row or None in row.values():  # more fields than the header, or fewer
                fields = [v for k, v in row.items() if k is not None and v is not None] + row.get(None, [])
                raise DatasetError(
                    f"{where}: expected {len(reader.fieldnames or [])} fields ({','.join(reader.fieldnames or [])}), "
                    f"got {len(fields)}"
                )
            rel, split = (row.get("path") or "").strip(), (row.get("split") or "").strip()
            name = (row.get("class") or "").strip() or (rel.split("/")[0] if "/" in rel else "")
            if split not in SPLITS:
                raise DatasetError(f"{where}: split must be train, val or test, got {split!r}")
            if not name:
                raise DatasetError(f"{where}: expected a relative path inside a class folder, got {rel!r}")
            relative_path(rel, where, str(folder))
            seen.add(rel, where, f"line {n}")
            rows.append((rel, split, name))
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e}; expected {what})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows (expected {what})")
    labels = {c: i for i, c in enumerate(sorted({r[2] for r in rows}))}
    raw: RawSplits = {s: [] for s in SPLITS}
    for rel, split, name in rows:
        raw[split].append((rel, labels[name], name))
    return raw


def read_inat_categories(path: Path) -> list[str]:
    """Species names by category id from iNat 2018's official `categories.json`.

    The file is a list of `{"id": int, "name": "Latin species name", "kingdom": ..., ...}`; ids must be
    exactly 0..K-1, the labels the OLTR lists use. (LIFT instead relabels by the sorted names, a
    permutation of these labels: its checkpoints' heads are in another class order.)
    """
    data = read_json(path, "iNaturalist 2018 categories.json, the official list of {id, name, ...}")
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path}: expected a non-empty list of categories {{'id': int, 'name': str, ...}}")
    names: dict[int, str] = {}
    for i, cat in enumerate(data):
        cid, name = (cat.get("id"), cat.get("name")) if isinstance(cat, dict) else (None, None)
        if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{path}: category [{i}]: expected {{'id': int, 'name': str, ...}}, got {cat!r}"[:400])
        if names.setdefault(cid, name.strip()) != name.strip():
            raise DatasetError(f"{path}: category [{i}]: id {cid} appears twice")
    missing = [k for k in range(len(names)) if k not in names][:10]
    if missing:
        raise DatasetError(f"{path}: category ids must be 0..{len(names) - 1}; missing {missing}")
    return [names[k] for k in range(len(names))]


def _oltr_list(path: Path, names: list[str], names_path: Path, what: str) -> list[Entry]:
    """One OLTR list: `relative/path label` per line (the label is the last field)."""
    inside = str(path.parent)

    def parse(line: str, where: str) -> Entry:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{where}: expected 'relative/path label', got {line!r}")
        rel = relative_path(parts[0], where, inside)
        label = parse_label(parts[1], where, 0, None)
        if label >= len(names):
            raise DatasetError(f"{where}: label {label}, but {names_path} names {len(names)} classes")
        return rel, label, names[label]

    return _list_entries(path, f"{what} image list, 'relative/path label' per line", parse)


def read_oltr_lists(spec: DatasetSpec, folder: Path, opts: ReaderOptions) -> RawSplits:
    """ImageNet-LT / Places-LT / iNat 2018: the spec's OLTR lists, names from `spec.names_file`.

    Places-LT names stay the raw Places365 folder names (`booth-indoor`, `botanical_garden`): the
    learners replace `_` by a space at prompt time, and `-indoor`/`-outdoor` are kept (as LIFT).
    Every class of the names file must have an image somewhere, so a truncated list cannot silently
    shrink the label space.
    """
    names_path = folder / spec.names_file
    if names_path.suffix == ".json":
        names = read_inat_categories(names_path)
    else:
        names = [name for _, name in read_name_pairs(names_path, f"{spec.name} class names", "folder")]
    raw: RawSplits = {
        s: _oltr_list(folder / spec.lists[s], names, names_path, spec.name) if s in spec.lists else []
        for s in SPLITS
    }
    _every_class_has_images(names_path, names, raw, ", ".join(str(folder / f) for f in spec.lists.values()))
    return raw


SplitSource = Callable[[DatasetSpec, Path, ReaderOptions], RawSplits]

SOURCES: dict[str, SplitSource] = {
    "split_json": read_split_json,
    "class_folders": read_class_folders,
    "pets_annotations": read_pets_annotations,
    "sun397_lists": read_sun397_lists,
    "ucf101_lists": read_ucf101_lists,
    "cars_mat": read_cars_mat,
    "flowers_mat": read_flowers_mat,
    "aircraft_lists": read_aircraft_lists,
    "imagenet_folders": read_imagenet_folders,
    "wnid_test_folders": read_wnid_test_folders,
    "index_test_folders": read_index_test_folders,
    "imagefolder": read_imagefolder,
    "oltr_lists": read_oltr_lists,
}

EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


def _coop_layout(name: str, folder: str, image_dir: str, split_file: str, fallback: str, raw_files: str, **kw: Any):
    """A reader of CoOp's split json, with the raw-file reader CoOp falls back to."""
    return DatasetSpec(name, folder, image_dir, "split_json", TEMPLATES[name], split_file, fallback, raw_files, **kw)


def _longtail(name: str, folder: str, lists: Mapping[str, str], names_file: str) -> DatasetSpec:
    """A real long-tailed benchmark: OLTR lists directly in `<root>/<folder>/`, images where they point."""
    return DatasetSpec(name, folder, "", "oltr_lists", TEMPLATES[name], lists=lists, names_file=names_file)


def _oltr(prefix: str) -> dict[str, str]:
    return {s: f"{prefix}_{s}.txt" for s in SPLITS}


def _test_only(name: str, folder: str, image_dir: str, source: str, **kw: Any) -> DatasetSpec:
    return DatasetSpec(name, folder, image_dir, source, TEMPLATES[name], test_only=True, **kw)


_FOLDERS = "the class folders"
_README = ("README.txt",)  # ImageNet-A/-R ship a README next to the class folders

# fmt: off
SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("imagenet", "imagenet", "images", "imagenet_folders", TEMPLATES["imagenet"]),
    _coop_layout("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "class_folders",
          _FOLDERS, renames=CALTECH_RENAMES, ignored=("BACKGROUND_Google", "Faces_easy")),
    _coop_layout("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "pets_annotations",
          "annotations/trainval.txt and test.txt"),
    _coop_layout("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", "cars_mat",
          "the devkit .mat files"),
    _coop_layout("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "flowers_mat",
          "imagelabels.mat and cat_to_name.json"),
    _coop_layout("food101", "food-101", "images", "split_zhou_Food101.json", "class_folders", _FOLDERS),
    DatasetSpec("fgvc_aircraft", "fgvc_aircraft", "images", "aircraft_lists", TEMPLATES["fgvc_aircraft"]),
    _coop_layout("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", "sun397_lists",
          "ClassName.txt, Training_01.txt and Testing_01.txt"),
    _coop_layout("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", "class_folders", _FOLDERS),
    _coop_layout("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "class_folders", _FOLDERS,
          renames=EUROSAT_RENAMES),
    _coop_layout("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "ucf101_lists",
          "ucfTrainTestlist/trainlist01.txt and testlist01.txt"),
    _test_only("imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "index_test_folders"),
    _test_only("imagenet_sketch", "imagenet-sketch", "images", "wnid_test_folders"),
    _test_only("imagenet_a", "imagenet-adversarial", "imagenet-a", "wnid_test_folders", ignored=_README),
    _test_only("imagenet_r", "imagenet-rendition", "imagenet-r", "wnid_test_folders", ignored=_README),
    DatasetSpec("imagefolder", "", "", "imagefolder", TEMPLATES["imagefolder"]),
    # Long-tailed benchmarks; the list paths are relative to the dataset folder, so the images go where
    # they point: imagenet_lt/{train,val}/<wnid>/*.JPEG (ImageNet's train and val; ImageNet-LT val is
    # carved from ImageNet train, its test is ImageNet val), places_lt/<the lists' folders>/ (e.g.
    # train/airfield/*.jpg), inat2018/train_val2018/<supercategory>/<id>/*.jpg. iNat has no val list:
    # its official val list is the test split and `val` stays empty.
    _longtail("imagenet_lt", "imagenet_lt", _oltr("ImageNet_LT"), "classnames.txt"),
    _longtail("places_lt", "places_lt", _oltr("Places_LT"), "classnames.txt"),
    _longtail("inat2018", "inat2018", {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"},
              "categories.json"),
)}
# fmt: on

for _spec in SPECS.values():
    DATASETS.register(_spec.name, _spec.load)
