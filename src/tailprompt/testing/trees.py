"""Miniature dataset trees in the real CoOp/Dassl layouts, for tests and for trying the CLI.

Every tree holds tiny JPEGs (16x16, a class colour plus per-image noise, so classes are separable)
and the split files the real dataset ships (CoOp's `split_zhou_*.json`, the official lists, the
`.mat` files when scipy is installed). Content is deterministic: the same call writes the same bytes.
Each maker returns `root`, the folder to pass as `--root` (the dataset folder is inside it), except
that an `imagefolder` tree puts its class folders directly in `root`.

The long-tailed benchmarks' trees (`imagenet_lt`, `places_lt`, `inat2018`) are long-tailed in train
(`longtail_train_counts`: 12, 6, 3, 2 training images for 4 classes at the default 6) and balanced in
val/test.

    root = make_eurosat_tree(tmp_path)            # tmp_path/eurosat/{2750/..., split_zhou_EuroSAT.json}
    ds = load_dataset("eurosat", root)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tailprompt.data.readers import stanford_cars_classname, ucf101_classname
from tailprompt.data.sampling import longtail_counts
from tailprompt.data.seeding import derived_rng

EUROSAT_FOLDERS = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip
EUROSAT_NAMES = [
    "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
    "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake",
]  # fmt: skip
IMAGENET_CLASSES = [
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
]  # fmt: skip
PLACES_LT_FOLDERS = ["airfield", "apartment_building-outdoor", "booth-indoor", "botanical_garden"]
# (id, name, supercategory, kingdom, phylum, class, order, family, genus) as in iNat 2018's categories.json
INAT_CATEGORIES = [
    (0, "Hermodice carunculata", "Animalia", "Animalia", "Annelida", "Polychaeta", "Phyllodocida",
     "Amphinomidae", "Hermodice"),
    (1, "Phragmatopoma californica", "Animalia", "Animalia", "Annelida", "Polychaeta", "Sabellida",
     "Sabellariidae", "Phragmatopoma"),
    (2, "Quercus agrifolia", "Plantae", "Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae",
     "Quercus"),
    (3, "Argiope aurantia", "Arachnida", "Animalia", "Arthropoda", "Arachnida", "Araneae", "Araneidae",
     "Argiope"),
]  # fmt: skip
IMAGENET_A_WNIDS = ["n01443537", "n01491361", "n01496331"]  # a subset, so labels follow sorted wnids
IMAGENET_R_WNIDS = ["n01440764", "n01484850", "n01494475"]

Split = dict[str, list[tuple[str, int, str]]]


def write_image(path: Path, label: int, index: int, size: int = 16) -> None:
    """A deterministic tiny JPEG: the class colour (from `label`) plus noise seeded by (label, index)."""
    hue = np.array([(label * 67) % 256, (label * 139 + 80) % 256, (label * 29 + 160) % 256], dtype=np.int16)
    noise = derived_rng("fixture", label, index).integers(-40, 41, size=(size, size, 3))
    pixels = np.clip(hue + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG", quality=90)


def _three_way(n: int) -> tuple[int, int, int]:
    """train/val/test sizes of a class with n images: 10% val and 10% test (at least 1 each)."""
    if n < 3:
        raise ValueError(f"images_per_class must be >= 3 for a train/val/test split, got {n}")
    n_eval = max(1, n // 10)
    return n - 2 * n_eval, n_eval, n_eval


def _split_of(n: int) -> list[str]:
    n_train, n_val, n_test = _three_way(n)
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _class_folder_tree(
    folder: Path,
    image_dir: str,
    folders: list[str],
    names: list[str],
    n: int,
    split_json: str | None,
    file_name: Callable[[str, int], str] = lambda c, i: f"{c}_{i + 1}.jpg",
) -> None:
    """`folder/image_dir/<class>/<file>` plus CoOp's split json over the given class names."""
    split: Split = {"train": [], "val": [], "test": []}
    for label, (cls, name) in enumerate(zip(folders, names)):
        for i, s in enumerate(_split_of(n)):
            rel = f"{cls}/{file_name(cls, i)}"
            write_image(folder / image_dir / rel, label, i)
            split[s].append((rel, label, name))
    if split_json:
        _write_json(folder / split_json, split)


def make_eurosat_tree(root: Path, images_per_class: int = 20) -> Path:
    """EuroSAT's 10 classes under `root/eurosat/2750/` with `split_zhou_EuroSAT.json` (renamed classes).

    Per class `images_per_class` images split 80/10/10 (20 -> 16 train, 2 val, 2 test), so 16-shot
    sampling has exactly enough. Returns `root`.
    """
    root = Path(root)
    _class_folder_tree(
        root / "eurosat", "2750", EUROSAT_FOLDERS, EUROSAT_NAMES, images_per_class, "split_zhou_EuroSAT.json"
    )
    return root


def _dtd(root: Path, n: int, k: int, split: bool) -> None:
    classes = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"][:k]
    name = "split_zhou_DescribableTextures.json" if split else None
    _class_folder_tree(root / "dtd", "images", classes, classes, n, name, lambda c, i: f"{c}_{i + 1:04d}.jpg")


def _eurosat(root: Path, n: int, k: int, split: bool) -> None:
    name = "split_zhou_EuroSAT.json" if split else None
    _class_folder_tree(root / "eurosat", "2750", EUROSAT_FOLDERS[:k], EUROSAT_NAMES[:k], n, name)


def _caltech(root: Path, n: int, k: int, split: bool) -> None:
    folders = ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor"][:k]
    names = ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"][:k]
    folder = root / "caltech-101"
    name = "split_zhou_Caltech101.json" if split else None
    _class_folder_tree(
        folder, "101_ObjectCategories", folders, names, n, name, lambda c, i: f"image_{i + 1:04d}.jpg"
    )
    for ignored in ("BACKGROUND_Google", "Faces_easy"):  # present in the real download, skipped by the reader
        write_image(folder / "101_ObjectCategories" / ignored / "image_0001.jpg", 99, 0)


def _food(root: Path, n: int, k: int, split: bool) -> None:
    classes = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"][:k]
    name = "split_zhou_Food101.json" if split else None
    _class_folder_tree(
        root / "food-101", "images", classes, classes, n, name, lambda c, i: f"{100000 + i}.jpg"
    )


def _pets(root: Path, n: int, k: int, split: bool) -> None:
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("american_pit_bull_terrier", 2),
              ("basset_hound", 2), ("beagle", 2), ("Bengal", 1)][:k]  # fmt: skip
    folder = root / "oxford_pets"
    coop: Split = {"train": [], "val": [], "test": []}
    lists: dict[str, list[str]] = {"trainval.txt": [], "test.txt": []}
    for label, (breed, species) in enumerate(breeds):
        for i, s in enumerate(_split_of(n)):
            stem = f"{breed}_{i + 1}"
            write_image(folder / "images" / f"{stem}.jpg", label, i)
            coop[s].append((f"{stem}.jpg", label, breed.lower()))
            lists["test.txt" if s == "test" else "trainval.txt"].append(
                f"{stem} {label + 1} {species} {label + 1}"
            )
    for name, lines in lists.items():
        _write_lines(folder / "annotations" / name, lines)
    if split:
        _write_json(folder / "split_zhou_OxfordPets.json", coop)


def _sun397(root: Path, n: int, k: int, split: bool) -> None:
    classes = ["a/abbey", "a/airplane_cabin", "b/bakery/shop", "b/bedroom", "c/church/outdoor"][:k]
    folder = root / "sun397"
    coop: Split = {"train": [], "val": [], "test": []}
    lists: dict[str, list[str]] = {"Training_01.txt": [], "Testing_01.txt": []}
    for label, cdir in enumerate(classes):
        name = " ".join(cdir.split("/")[1:][::-1])
        for i, s in enumerate(_split_of(n)):
            rel = f"{cdir}/sun_{label:03d}{i:05d}.jpg"
            write_image(folder / "SUN397" / rel, label, i)
            coop[s].append((rel, label, name))
            lists["Testing_01.txt" if s == "test" else "Training_01.txt"].append(f"/{rel}")
    _write_lines(folder / "ClassName.txt", [f"/{c}" for c in classes])
    for name, lines in lists.items():
        _write_lines(folder / name, lines)
    if split:
        _write_json(folder / "split_zhou_SUN397.json", coop)


def _ucf101(root: Path, n: int, k: int, split: bool) -> None:
    actions = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "YoYo"][:k]
    folder = root / "ucf101"
    coop: Split = {"train": [], "val": [], "test": []}
    lists: dict[str, list[str]] = {"trainlist01.txt": [], "testlist01.txt": []}
    for label, action in enumerate(actions):
        renamed = ucf101_classname(action)
        for i, s in enumerate(_split_of(n)):
            video = f"v_{action}_g{i + 1:02d}_c01"
            write_image(folder / "UCF-101-midframes" / renamed / f"{video}.jpg", label, i)
            coop[s].append((f"{renamed}/{video}.jpg", label, renamed))
            if s == "test":
                lists["testlist01.txt"].append(f"{action}/{video}.avi")
            else:
                lists["trainlist01.txt"].append(f"{action}/{video}.avi {label + 1}")
    _write_lines(folder / "ucfTrainTestlist/classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    for name, lines in lists.items():
        _write_lines(folder / "ucfTrainTestlist" / name, lines)
    if split:
        _write_json(folder / "split_zhou_UCF101.json", coop)


def _aircraft(root: Path, n: int, k: int, split: bool) -> None:
    variants = ["707-320", "727-200", "737-200", "A300B4", "F/A-18"][:k]
    folder = root / "fgvc_aircraft"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, variant in enumerate(variants):
        for i, s in enumerate(_split_of(n)):
            image = f"{1000000 + 100 * label + i}"
            write_image(folder / "images" / f"{image}.jpg", label, i)
            lists[s].append(f"{image} {variant}")
    _write_lines(folder / "variants.txt", variants)
    for s, lines in lists.items():
        _write_lines(folder / f"images_variant_{s}.txt", lines)


def _savemat(path: Path, data: dict) -> bool:
    try:
        from scipy.io import savemat
    except ImportError:  # scipy is a dev extra: without it the trees just lack the .mat files
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), data)
    return True


def _cars(root: Path, n: int, k: int, split: bool) -> None:
    meta = [
        "AM General Hummer SUV 2000",
        "Acura RL Sedan 2012",
        "Acura TL Sedan 2012",
        "Audi TTS Coupe 2012",
    ][:k]
    folder = root / "stanford_cars"
    coop: Split = {"train": [], "val": [], "test": []}
    annos: dict[str, list[tuple[str, int]]] = {"cars_train": [], "cars_test": []}
    for label, raw in enumerate(meta):
        for i, s in enumerate(_split_of(n)):
            image_dir = "cars_test" if s == "test" else "cars_train"
            fname = f"{len(annos[image_dir]) + 1:05d}.jpg"
            annos[image_dir].append((fname, label + 1))
            write_image(folder / image_dir / fname, label, i)
            coop[s].append((f"{image_dir}/{fname}", label, stanford_cars_classname(raw)))
    if split:
        _write_json(folder / "split_zhou_StanfordCars.json", coop)

    def struct(rows: list[tuple[str, int]]) -> np.ndarray:
        arr = np.empty((1, len(rows)), dtype=[("fname", object), ("class", object)])
        for j, (fname, cls) in enumerate(rows):
            arr[0, j] = (fname, np.array([[cls]], dtype=np.uint8))
        return arr

    names = np.empty((1, len(meta)), dtype=object)
    names[0, :] = meta
    _savemat(folder / "devkit/cars_meta.mat", {"class_names": names})
    _savemat(folder / "devkit/cars_train_annos.mat", {"annotations": struct(annos["cars_train"])})
    _savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": struct(annos["cars_test"])})


def _flowers(root: Path, n: int, k: int, split: bool) -> None:
    names = [
        "pink primrose",
        "hard-leaved pocket orchid",
        "canterbury bells",
        "sweet pea",
        "english marigold",
    ][:k]
    folder = root / "oxford_flowers"
    coop: Split = {"train": [], "val": [], "test": []}
    labels = []
    for label, name in enumerate(names):
        for i, s in enumerate(_split_of(n)):
            labels.append(label + 1)
            fname = f"image_{len(labels):05d}.jpg"
            write_image(folder / "jpg" / fname, label, i)
            coop[s].append((fname, label, name))
    _write_json(folder / "cat_to_name.json", {str(i + 1): name for i, name in enumerate(names)})
    _savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    if split:
        _write_json(folder / "split_zhou_OxfordFlowers.json", coop)


def _classnames_txt(path: Path, classes: list[tuple[str, str]]) -> None:
    _write_lines(path, [f"{w} {name}" for w, name in classes])


def _imagenet(root: Path, n: int, k: int, split: bool) -> None:
    folder = root / "imagenet"
    classes = IMAGENET_CLASSES[:k]
    _classnames_txt(folder / "classnames.txt", IMAGENET_CLASSES)
    n_val = max(2, n // 4)
    for label, (wnid, _) in enumerate(classes):
        for i in range(n):
            write_image(folder / "images/train" / wnid / f"{wnid}_{i + 1}.JPEG", label, i)
        for i in range(n_val):
            write_image(
                folder / "images/val" / wnid / f"ILSVRC2012_val_{label * 100 + i + 1:08d}.JPEG", label, n + i
            )


def _wnid_variant(folder: Path, image_dir: str, wnids: list[str], n: int, readme: bool) -> None:
    _classnames_txt(folder / "classnames.txt", IMAGENET_CLASSES)
    labels = {w: i for i, (w, _) in enumerate(IMAGENET_CLASSES)}
    for wnid in wnids:
        for i in range(n):
            write_image(folder / image_dir / wnid / f"{wnid}_v{i + 1}.jpg", labels[wnid], 1000 + i)
    if readme:
        _write_lines(folder / image_dir / "README.txt", ["not a class folder"])


def _imagenet_a(root: Path, n: int, k: int, split: bool) -> None:
    _wnid_variant(root / "imagenet-adversarial", "imagenet-a", IMAGENET_A_WNIDS[:k], n, True)


def _imagenet_r(root: Path, n: int, k: int, split: bool) -> None:
    _wnid_variant(root / "imagenet-rendition", "imagenet-r", IMAGENET_R_WNIDS[:k], n, True)


def _imagenet_sketch(root: Path, n: int, k: int, split: bool) -> None:
    _wnid_variant(root / "imagenet-sketch", "images", [w for w, _ in IMAGENET_CLASSES[:k]], n, False)


def _imagenetv2(root: Path, n: int, k: int, split: bool) -> None:
    folder = root / "imagenetv2"
    _classnames_txt(folder / "classnames.txt", IMAGENET_CLASSES[:k])
    for label in range(k):
        for i in range(n):
            write_image(
                folder / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i:040x}.jpeg", label, i
            )


def _imagefolder(root: Path, n: int, k: int, split: bool) -> None:
    for label, cls in enumerate(["cat", "dog", "red_fox", "zebra"][:k]):
        for i in range(n):
            write_image(root / cls / f"{cls}_{i}.png" if i % 2 else root / cls / f"{cls}_{i}.jpg", label, i)


def longtail_train_counts(n: int, k: int) -> list[int]:
    """Training images per class of a long-tailed tree: 2n for the head down to n/3 for the tail, `exp`."""
    return longtail_counts(k, 2 * n, tau=1 / 6)


def _longtail_tree(
    folder: Path, lists: dict[str, str], paths: Callable[[str, int, int], str], n: int, k: int
) -> None:
    """Images and OLTR lists (`relative/path label`): long-tailed train, n//3 val and n//2 test per class.

    `lists` maps split -> list file name (a split without one is not written); `paths(split, label, i)`
    is image i's path relative to `folder`.
    """
    sizes = {"train": longtail_train_counts(n, k), "val": [max(1, n // 3)] * k, "test": [max(1, n // 2)] * k}
    offset = {"train": 0, "val": 1000, "test": 2000}  # distinct noise per split
    for split, name in lists.items():
        lines = []
        for label in range(k):
            for i in range(sizes[split][label]):
                rel = paths(split, label, i)
                write_image(folder / rel, label, offset[split] + i)
                lines.append(f"{rel} {label}")
        _write_lines(folder / name, lines)


def _imagenet_lt(root: Path, n: int, k: int, split: bool) -> None:
    classes = IMAGENET_CLASSES[:k]
    _classnames_txt(root / "imagenet_lt/classnames.txt", classes)

    def path(s: str, label: int, i: int) -> str:  # val is carved from ImageNet train, test is ImageNet val
        wnid = classes[label][0]
        if s == "test":
            return f"val/{wnid}/ILSVRC2012_val_{label * 1000 + i + 1:08d}.JPEG"
        return f"train/{wnid}/{wnid}_{(500 if s == 'val' else 0) + i + 1}.JPEG"

    _longtail_tree(root / "imagenet_lt", {s: f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")}, path, n, k)


def _places_lt(root: Path, n: int, k: int, split: bool) -> None:
    folders = PLACES_LT_FOLDERS[:k]
    _write_lines(root / "places_lt/classnames.txt", [f"{f} {f}" for f in folders])

    def path(s: str, label: int, i: int) -> str:
        if s == "test":
            return f"val/{folders[label]}/Places365_val_{label * 1000 + i + 1:08d}.jpg"
        return f"train/{folders[label]}/{(5000 if s == 'val' else 0) + i + 1:08d}.jpg"

    _longtail_tree(root / "places_lt", {s: f"Places_LT_{s}.txt" for s in ("train", "val", "test")}, path, n, k)


def _inat2018(root: Path, n: int, k: int, split: bool) -> None:
    keys = ("id", "name", "supercategory", "kingdom", "phylum", "class", "order", "family", "genus")
    cats = INAT_CATEGORIES[:k]
    _write_json(root / "inat2018/categories.json", [dict(zip(keys, c)) for c in cats])

    def path(s: str, label: int, i: int) -> str:  # `test` is written as the official val list
        digest = derived_rng("fixture-inat", s, label, i).bytes(16).hex()
        return f"train_val2018/{cats[label][2]}/{cats[label][0]}/{digest}.jpg"

    lists = {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"}
    _longtail_tree(root / "inat2018", lists, path, n, k)


# name -> (maker, number of classes it knows)
TREES: dict[str, tuple[Callable[[Path, int, int, bool], None], int]] = {
    "eurosat": (_eurosat, 10),
    "dtd": (_dtd, 6),
    "caltech101": (_caltech, 6),
    "food101": (_food, 5),
    "oxford_pets": (_pets, 6),
    "sun397": (_sun397, 5),
    "ucf101": (_ucf101, 5),
    "fgvc_aircraft": (_aircraft, 5),
    "stanford_cars": (_cars, 4),
    "oxford_flowers": (_flowers, 5),
    "imagenet": (_imagenet, 6),
    "imagenet_a": (_imagenet_a, 3),
    "imagenet_r": (_imagenet_r, 3),
    "imagenet_sketch": (_imagenet_sketch, 6),
    "imagenetv2": (_imagenetv2, 6),
    "imagefolder": (_imagefolder, 4),
    "imagenet_lt": (_imagenet_lt, 6),
    "places_lt": (_places_lt, 4),
    "inat2018": (_inat2018, 4),
}


def make_dataset_tree(
    name: str, root: Path, images_per_class: int = 6, num_classes: int | None = None, split_file: bool = True
) -> Path:
    """A miniature tree of dataset `name` (any reader name) under `root`; returns `root`.

    Args:
        name: reader name (`eurosat`, `dtd`, `oxford_pets`, `sun397`, `imagenet`, `imagenet_a`, ...).
        images_per_class: images per class (train/val/test 80/10/10, at least one val and test); for
            the long-tailed trees n gives train counts 2n .. n/3 (`longtail_train_counts`), n//3 val
            and n//2 test per class.
        num_classes: how many of the maker's realistic classes to use (default: all it knows).
        split_file: write CoOp's `split_zhou_*.json` where the dataset has one (the raw lists and
            folders the reference falls back to are always written).
    """
    if name not in TREES:
        raise KeyError(f"no miniature tree for {name!r}; known: {', '.join(sorted(TREES))}")
    maker, known = TREES[name]
    k = known if num_classes is None else num_classes
    if not 1 <= k <= known:
        raise ValueError(f"{name}: num_classes must be in 1..{known}, got {k}")
    root = Path(root)
    maker(root, images_per_class, k, split_file)
    return root
