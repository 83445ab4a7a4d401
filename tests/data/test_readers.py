"""Readers: class names, keys, templates and errors on miniature trees in the real layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tailprompt.data import DATASETS, DatasetError, load_dataset
from tailprompt.data.readers import SPECS
from tailprompt.data.templates import TEMPLATES
from tailprompt.schema import ConfigError
from tailprompt.testing.trees import EUROSAT_NAMES, TREES, make_dataset_tree, make_eurosat_tree

BENCHMARKS = [
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
]  # fmt: skip


def test_every_coop_name_and_imagefolder_is_registered():
    for name in [*BENCHMARKS, "imagefolder"]:
        assert name in DATASETS and name in SPECS and name in TREES


IN6 = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]

# name -> (expected class names of the miniature tree, a test key)
EXPECTED = {
    "eurosat": (EUROSAT_NAMES, "2750/AnnualCrop/AnnualCrop_6.jpg"),
    "dtd": (["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"],
            "images/banded/banded_0006.jpg"),
    "caltech101": (["face", "leopard", "motorbike", "accordion", "airplane", "anchor"],
                   "101_ObjectCategories/Faces/image_0006.jpg"),
    "oxford_pets": (["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
                     "bengal"], "images/Abyssinian_6.jpg"),
    "sun397": (["abbey", "airplane_cabin", "shop bakery", "bedroom", "outdoor church"],
               "SUN397/a/abbey/sun_00000005.jpg"),
    "ucf101": (["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Yo_Yo"],
               "UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g06_c01.jpg"),
    "stanford_cars": (["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                       "2012 Audi TTS Coupe"], "cars_test/00001.jpg"),
    "oxford_flowers": (["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                        "english marigold"], "jpg/image_00006.jpg"),
    "food101": (["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"],
                "images/apple_pie/100005.jpg"),
    "fgvc_aircraft": (["707-320", "727-200", "737-200", "A300B4", "F/A-18"], "images/1000005.jpg"),
    "imagenet": (IN6, "images/val/n01440764/ILSVRC2012_val_00000001.JPEG"),
    # -A/-R: the variant's own wnid folders in sorted order, names from the 1000-line classnames.txt
    "imagenet_a": (["goldfish", "tiger shark", "electric ray"], "imagenet-a/n01443537/n01443537_v1.jpg"),
    "imagenet_r": (["tench", "great white shark", "hammerhead shark"],
                   "imagenet-r/n01440764/n01440764_v1.jpg"),
    "imagenet_sketch": (IN6, "images/n01440764/n01440764_v1.jpg"),
    "imagenetv2": (IN6, "imagenetv2-matched-frequency-format-val/0/" + "0" * 40 + ".jpeg"),
    "imagefolder": (["cat", "dog", "red_fox", "zebra"], "cat/cat_2.jpg"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reader_class_names_keys_and_template(tmp_path, name):
    names, test_key = EXPECTED[name]
    ds = load_dataset(name, make_dataset_tree(name, tmp_path))
    assert ds.classnames == names
    assert ds.template == TEMPLATES[name]
    assert test_key in {it.key for it in ds.test}
    for split in (ds.train, ds.val, ds.test):  # every key is a real file, labels match names
        for it in split:
            assert (ds.root / it.key).is_file()
            assert ds.classnames[it.label] == it.classname
    assert ds.load_image(ds.test[0]).mode == "RGB"
    if SPECS[name].test_only:
        assert ds.train == [] and ds.val == [] and ds.test
    else:
        assert ds.train and ds.test and {it.label for it in ds.train} == set(range(ds.num_classes))


def test_templates_match_coop_zeroshot_table():
    assert TEMPLATES["eurosat"] == "a centered satellite photo of {}."
    assert TEMPLATES["dtd"] == "{} texture."
    assert TEMPLATES["ucf101"] == "a photo of a person doing {}."
    assert TEMPLATES["food101"] == "a photo of {}, a type of food."
    assert TEMPLATES["oxford_pets"] == "a photo of a {}, a type of pet."


def test_ensemble_templates_add_dataset_template_except_imagenet(tmp_path):
    eurosat = load_dataset("eurosat", make_dataset_tree("eurosat", tmp_path, num_classes=2))
    imagenet = load_dataset("imagenet", make_dataset_tree("imagenet", tmp_path, num_classes=2))
    assert len(imagenet.templates) == 7 and len(eurosat.templates) == 8
    assert eurosat.templates[-1] == eurosat.template and imagenet.template not in imagenet.templates


def test_imagenet_val_is_test_and_labels_follow_sorted_wnids(tmp_path):
    ds = load_dataset("imagenet", make_dataset_tree("imagenet", tmp_path, images_per_class=4))
    assert ds.val == ds.test and len(ds.train) == 6 * 4
    goldfish = [it for it in ds.train if it.key.startswith("images/train/n01443537/")]
    assert goldfish and all(it.label == 1 for it in goldfish)


def test_imagenet_a_ignores_readme_and_uses_sorted_variant_wnids(tmp_path):
    root = make_dataset_tree("imagenet_a", tmp_path, images_per_class=2)
    assert (root / "imagenet-adversarial/imagenet-a/README.txt").is_file()
    ds = load_dataset("imagenet_a", root)
    labels = {it.key.split("/")[1]: it.label for it in ds.test}
    assert labels == {"n01443537": 0, "n01491361": 1, "n01496331": 2}


def test_split_json_is_read_verbatim(tmp_path):
    """Labels, names and membership come from the json, not from the folders."""
    root = make_eurosat_tree(tmp_path, images_per_class=10)
    split_path = root / "eurosat/split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    split["train"] = [["Forest/Forest_1.jpg", 0, "woods"], ["River/River_1.jpg", 1, "stream"]]
    split["val"], split["test"] = [], [["River/River_2.jpg", 1, "stream"]]
    split_path.write_text(json.dumps(split))
    ds = load_dataset("eurosat", root)
    assert ds.classnames == ["woods", "stream"]
    assert [it.key for it in ds.train] == ["2750/Forest/Forest_1.jpg", "2750/River/River_1.jpg"]


def test_missing_split_json_names_it_and_generate_split_is_deterministic(tmp_path):
    root = make_dataset_tree("dtd", tmp_path, split_file=False, num_classes=3)
    with pytest.raises(DatasetError, match=r"split_zhou_DescribableTextures\.json: missing split file.*generate_split"):
        load_dataset("dtd", root)
    a = load_dataset("dtd", root, {"generate_split": True})
    b = load_dataset("dtd", root, {"generate_split": True})
    c = load_dataset("dtd", root, {"generate_split": True, "split_seed": 5})
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    assert (len(a.train), len(a.val), len(a.test)) == (
        3 * 3,
        3 * 1,
        3 * 2,
    )  # 6 images: round 50% / 20% / rest
    assert not (root / "dtd/split_zhou_DescribableTextures.json").exists()  # nothing written into the dataset


@pytest.mark.parametrize("name", ["eurosat", "caltech101", "oxford_pets", "sun397", "ucf101", "food101"])
def test_generated_split_reproduces_reference_class_names(tmp_path, name):
    """The raw-file readers apply the same name fixes CoOp baked into its split files."""
    with_json = load_dataset(name, make_dataset_tree(name, tmp_path / "a"))
    generated = load_dataset(name, make_dataset_tree(name, tmp_path / "b", split_file=False), {"generate_split": True})
    assert generated.classnames == with_json.classnames
    assert {it.key for s in (generated.train, generated.val, generated.test) for it in s} == {
        it.key for s in (with_json.train, with_json.val, with_json.test) for it in s
    }


@pytest.mark.parametrize("name", ["stanford_cars", "oxford_flowers"])
def test_mat_readers(tmp_path, name):
    pytest.importorskip("scipy")
    with_json = load_dataset(name, make_dataset_tree(name, tmp_path / "a"))
    generated = load_dataset(name, make_dataset_tree(name, tmp_path / "b", split_file=False), {"generate_split": True})
    assert generated.classnames == with_json.classnames
    assert sorted(it.key for it in generated.test + generated.val + generated.train) == sorted(
        it.key for it in with_json.test + with_json.val + with_json.train
    )


def test_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"eurosat: missing folder"):
        load_dataset("eurosat", tmp_path)
    with pytest.raises(DatasetError, match="needs a root"):
        load_dataset("eurosat", None)
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    split_path = root / "eurosat/split_zhou_EuroSAT.json"
    split_path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"split_zhou_EuroSAT\.json: malformed split file, not valid JSON"):
        load_dataset("eurosat", root)
    split_path.write_text(json.dumps({"train": [["../escape.jpg", 0, "x"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"malformed split file, train\[0\]: expected a relative image path"):
        load_dataset("eurosat", root)
    split_path.write_text(json.dumps({"train": [["a.jpg", "zero", "x"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"train\[0\]: expected a label"):
        load_dataset("eurosat", root)
    split_path.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DatasetError, match="expected an object with lists"):
        load_dataset("eurosat", root)
    split_path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 2, "y"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"labels must be 0\.\.2 without gaps; missing \[1\]"):
        load_dataset("eurosat", root)


def test_options_are_checked(tmp_path):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    with pytest.raises(ConfigError, match="unknown key data.options.'splitfile'"):
        load_dataset("eurosat", root, {"splitfile": "x.json"})
    with pytest.raises(DatasetError, match="template"):
        load_dataset("eurosat", root, {"template": "no placeholder"})
    assert load_dataset("eurosat", root, {"template": "satellite image of {}."}).template == "satellite image of {}."


def test_imagenet_classnames_file_must_list_every_folder(tmp_path):
    root = make_dataset_tree("imagenet_sketch", tmp_path, images_per_class=2)
    (root / "imagenet-sketch/images/n99999999").mkdir()
    with pytest.raises(DatasetError, match=r"n99999999.*not listed in .*classnames\.txt"):
        load_dataset("imagenet_sketch", root)


def test_imagefolder_split_csv_and_folder_option(tmp_path):
    data = tmp_path / "mine"
    make_dataset_tree("imagefolder", data, images_per_class=3, num_classes=2)
    (data / "split.csv").write_text("path,split\ncat/cat_0.jpg,train\ndog/dog_1.png,train\ncat/cat_2.jpg,test\n")
    ds = load_dataset("imagefolder", tmp_path, {"folder": "mine", "split_file": "split.csv", "template": "{}!"})
    assert ds.classnames == ["cat", "dog"] and ds.template == "{}!"
    assert [(it.key, it.label) for it in ds.train] == [("cat/cat_0.jpg", 0), ("dog/dog_1.png", 1)]
    assert [it.key for it in ds.test] == ["cat/cat_2.jpg"] and ds.val == []
    (data / "split.csv").write_text("path,split\ncat/cat_0.jpg,training\n")
    with pytest.raises(DatasetError, match=r"split\.csv:2: split must be train, val or test"):
        load_dataset("imagefolder", data, {"split_file": "split.csv"})


def test_imagefolder_without_csv_keeps_a_training_image_per_class(tmp_path):
    make_dataset_tree("imagefolder", tmp_path, images_per_class=1, num_classes=2)
    ds = load_dataset("imagefolder", tmp_path)
    assert len(ds.train) == 2 and ds.val == [] and ds.test == []


def test_imagefolder_one_level_too_high_names_the_folder_to_give_instead(tmp_path):
    make_dataset_tree("imagefolder", tmp_path / "data", images_per_class=1, num_classes=2)
    with pytest.raises(DatasetError, match=r"one class folder \(data\).*give \S*/data as the root"):
        load_dataset("imagefolder", tmp_path)


def test_trees_are_deterministic(tmp_path):
    a = make_eurosat_tree(tmp_path / "a", images_per_class=3) / "eurosat"
    b = make_eurosat_tree(tmp_path / "b", images_per_class=3) / "eurosat"
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)


def test_file_identity_changes_when_the_file_changes(tmp_path):
    ds = load_dataset("eurosat", make_eurosat_tree(tmp_path, images_per_class=3))
    item = ds.train[0]
    before = ds.image_identity(item)
    assert before == ds.image_identity(item) and str(Path(ds.root) / item.key) in before
    path = ds.root / item.key
    path.write_bytes(path.read_bytes() + b"\0")
    assert ds.image_identity(item) != before


def test_a_stray_huge_label_is_reported_as_a_gap_without_building_the_range(tmp_path):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    split_path = root / "eurosat/split_zhou_EuroSAT.json"
    split_path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 10**30, "y"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=rf"labels must be 0\.\.{10**30} without gaps; missing \[1, 2, 3, "):
        load_dataset("eurosat", root)


def test_an_undecodable_list_file_names_it(tmp_path):
    root = make_dataset_tree("imagenet", tmp_path, images_per_class=3)
    names = next(root.rglob("classnames.txt"))
    names.write_bytes(b"\xff\xfe\x00n01440764 tench\n")
    with pytest.raises(DatasetError, match=rf"{names}: not UTF-8 text"):
        load_dataset("imagenet", root)


# ---------------------------------------------------------------------------------------------------
# Bad input as classes: every reader names the file (and line) and what it expected; benign quirks of real
# files (CRLF, BOM, blank lines, comments, trailing whitespace, Thumbs.db) are accepted.

# name -> a line-based list file of the raw reader (relative to the dataset folder), its options
RAW_LISTS = {
    "oxford_pets": ("annotations/test.txt", {"generate_split": True}),
    "sun397": ("Testing_01.txt", {"generate_split": True}),
    "ucf101": ("ucfTrainTestlist/testlist01.txt", {"generate_split": True}),
    "fgvc_aircraft": ("images_variant_test.txt", {}),
    "imagenet_sketch": ("classnames.txt", {}),
    "places_lt": ("Places_LT_test.txt", {}),
}


def _tree(tmp_path, name, n=10):
    root = make_dataset_tree(name, tmp_path, images_per_class=n, num_classes=3, split_file=False)
    return root, root / SPECS[name].folder


@pytest.mark.parametrize("name", sorted(RAW_LISTS))
def test_benign_quirks_of_list_files_are_accepted(tmp_path, name):
    rel, options = RAW_LISTS[name]
    root, folder = _tree(tmp_path, name)
    expected = load_dataset(name, root, options)
    path = folder / rel
    text = path.read_text()
    path.write_bytes(b"\xef\xbb\xbf# a comment\r\n\r\n" + text.replace("\n", " \t\r\n\r\n").encode())
    ds = load_dataset(name, root, options)
    assert ds.classnames == expected.classnames and ds.test == expected.test


@pytest.mark.parametrize("name", sorted(RAW_LISTS))
@pytest.mark.parametrize("damage, message", [
    ("empty", r"empty file \(expected"), ("garbage", r"not UTF-8 text \(expected"),
    ("folder", r"expected a file \("), ("duplicate", "duplicate"),
])  # fmt: skip
def test_damaged_list_files_are_named(tmp_path, name, damage, message):
    rel, options = RAW_LISTS[name]
    root, folder = _tree(tmp_path, name, n=3 if damage != "duplicate" else 10)
    path = folder / rel
    if damage == "empty":
        path.write_text("\n  \n")
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)))
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        lines = path.read_text().splitlines()
        path.write_text("\n".join([*lines, "", lines[0]]) + "\n")
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(name, root, options)
    assert str(path) in str(e.value)
    if damage == "duplicate":  # the line numbers count blank lines too
        assert f"{path}:{len(lines) + 2}: duplicate" in str(e.value) and "(first at line 1)" in str(e.value)


@pytest.mark.parametrize("name, rel, line, message", [
    ("oxford_pets", "annotations/test.txt", "Abyssinian_77 0 1 1", r"expected a CLASS-ID \(an integer >= 1\), got '0'"),
    ("oxford_pets", "annotations/test.txt", "Abyssinian_77 -1 1 1", "expected a CLASS-ID"),
    ("oxford_pets", "annotations/test.txt", "Abyssinian_77 \u00b2 1 1", "expected a CLASS-ID"),
    ("oxford_pets", "annotations/test.txt", "../Abyssinian_77 1 1 1", "expected a relative image path"),
    ("oxford_pets", "annotations/test.txt", "Abyssinian_77 1 1", "expected 'IMAGE CLASS-ID SPECIES BREED-ID'"),
    ("sun397", "Testing_01.txt", "/../a/abbey/x.jpg", "expected a relative image path"),
    ("sun397", "Testing_01.txt", "/a/abbey/x.jpg 3", "expected one image path"),
    ("ucf101", "ucfTrainTestlist/trainlist01.txt", "Archery/v_Archery_g99_c01.avi 9", r"INDEX in 1\.\.3, got '9'"),
    ("ucf101", "ucfTrainTestlist/trainlist01.txt", "Archery/v_Archery_g99_c01.avi 1", "index 1, but"),
    ("ucf101", "ucfTrainTestlist/classInd.txt", "0 YoYo", r"expected a class INDEX \(an integer >= 1\), got '0'"),
    ("ucf101", "ucfTrainTestlist/classInd.txt", "2 YoYo", "appears twice"),
    ("fgvc_aircraft", "images_variant_test.txt", "/etc/passwd 707-320", "expected a relative image path"),
    ("fgvc_aircraft", "images_variant_test.txt", "1234567", "expected 'IMAGE-ID variant'"),
    ("fgvc_aircraft", "variants.txt", "707-320", "duplicate class '707-320'"),
    ("sun397", "ClassName.txt", "/z/zoo", r"1 of 4 classes have no image"),
])  # fmt: skip
def test_malformed_raw_list_lines_name_file_and_line(tmp_path, name, rel, line, message):
    root, folder = _tree(tmp_path, name)
    path = folder / rel
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, line]) + "\n")
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(name, root, {"generate_split": True} if SPECS[name].split_file else {})
    assert str(path) in str(e.value)
    if "classes have no image" not in message:
        assert f"{path}:{len(lines) + 1}:" in str(e.value)


def test_split_json_duplicates_gaps_and_huge_documents_name_the_file(tmp_path):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    path = root / "eurosat/split_zhou_EuroSAT.json"
    split = json.loads(path.read_text())
    for bad, message in [
        ({**split, "train": [*split["train"], split["train"][0]]}, r"duplicate image .*first at train\[0\]"),
        ({**split, "test": [["x/C:\\a.jpg", 0, "x"], ["C:\\a.jpg", 0, "x"]]}, r"test\[1\]: expected a relative image"),
        ({**split, "test": [*split["test"], ["a.jpg", 99, "x"]]}, "malformed split file: labels must be 0..99 without"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match=message) as e:
            load_dataset("eurosat", root)
        assert str(path) in str(e.value)
    for text in ("[" * 100000, '{"train": [' + "1" * 5000 + "]}"):  # nesting, a number int() refuses
        path.write_text(text)
        with pytest.raises(DatasetError, match=f"{path}: malformed split file, not valid JSON"):
            load_dataset("eurosat", root)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(split).encode())  # a BOM is accepted
    assert load_dataset("eurosat", root).classnames == EUROSAT_NAMES


def test_a_file_where_a_folder_is_expected_and_vice_versa(tmp_path):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    images = root / "eurosat/2750"
    shutil.rmtree(images)
    images.write_text("not a folder")
    with pytest.raises(DatasetError, match=f"{images}: expected a folder \\(images of eurosat\\), found a file"):
        load_dataset("eurosat", root)
    images.unlink()
    images.mkdir()
    split = root / "eurosat/split_zhou_EuroSAT.json"
    split.unlink()
    split.mkdir()
    with pytest.raises(DatasetError, match=f"{split}: expected a file .*found a folder"):
        load_dataset("eurosat", root)


def test_scanned_class_folders_skip_junk_and_reject_empty_classes(tmp_path):
    root = make_dataset_tree("imagenet_sketch", tmp_path, images_per_class=2, num_classes=2)
    images = root / "imagenet-sketch/images"
    for junk in ("Thumbs.db", ".DS_Store", "desktop.ini"):
        (images / "n01440764" / junk).write_bytes(b"\0junk")
    (images / ".cache").mkdir()
    assert len(load_dataset("imagenet_sketch", root).test) == 4
    for f in (images / "n01443537").iterdir():
        f.unlink()
    (images / "n01443537" / "Thumbs.db").write_bytes(b"\0")
    with pytest.raises(DatasetError, match=f"{images / 'n01443537'}: class folder without images \\(expected"):
        load_dataset("imagenet_sketch", root)


def test_imagenetv2_folders_must_be_the_class_indices(tmp_path):
    root = make_dataset_tree("imagenetv2", tmp_path, images_per_class=2, num_classes=2)
    (root / "imagenetv2/classnames.txt").write_text("n01440764 tench\n")
    with pytest.raises(DatasetError, match=r"folder\(s\) \['1'\] are not class indices 0\.\.0"):
        load_dataset("imagenetv2", root)


@pytest.mark.parametrize("name, rel, key, message", [
    ("stanford_cars", "devkit/cars_meta.mat", "class_names", "no variable 'class_names'"),
    ("stanford_cars", "cars_test_annos_withlabels.mat", "annotations", "no variable 'annotations'"),
    ("oxford_flowers", "imagelabels.mat", "labels", "no variable 'labels'"),
])  # fmt: skip
def test_mat_files_without_the_expected_variable_are_named(tmp_path, name, rel, key, message):
    scipy_io = pytest.importorskip("scipy.io")
    root, folder = _tree(tmp_path, name, n=3)
    scipy_io.savemat(str(folder / rel), {"other": [1, 2]})
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(name, root, {"generate_split": True})
    assert str(folder / rel) in str(e.value) and "expected" in str(e.value)


def test_mat_labels_out_of_range_and_bad_name_maps_are_named(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    import numpy as np

    root, folder = _tree(tmp_path, "oxford_flowers", n=3)
    (folder / "cat_to_name.json").write_text("null")
    with pytest.raises(DatasetError, match=r"cat_to_name\.json: expected an object"):
        load_dataset("oxford_flowers", root, {"generate_split": True})
    scipy_io.savemat(str(folder / "imagelabels.mat"), {"labels": np.array([[0, 1, 2]])})
    with pytest.raises(DatasetError, match=r"imagelabels\.mat: expected 'labels', one 1-based class"):
        load_dataset("oxford_flowers", root, {"generate_split": True})
    root, folder = _tree(tmp_path / "cars", "stanford_cars", n=3)
    annos = folder / "cars_test_annos_withlabels.mat"
    arr = np.empty((1, 1), dtype=[("fname", object), ("class", object)])
    arr[0, 0] = ("00001.jpg", np.array([[9]], dtype=np.uint8))
    scipy_io.savemat(str(annos), {"annotations": arr})
    with pytest.raises(DatasetError, match=rf"{annos}: annotations\[0\]: expected a class in 1\.\.3, got '9'"):
        load_dataset("stanford_cars", root, {"generate_split": True})


def test_imagefolder_odd_names_and_nested_folders(tmp_path):
    from tailprompt.testing.trees import write_image

    for label, cls in enumerate(["café au lait", "日本 猫", "with  two spaces"]):
        for i in range(3):
            write_image(tmp_path / cls / ("deep/er" if i == 2 else "") / f"img {i}.jpg", label, i)
    (tmp_path / "日本 猫" / "Thumbs.db").write_bytes(b"\0")
    write_image(tmp_path / "日本 猫" / ".hidden" / "x.jpg", 1, 9)
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.classnames == ["café au lait", "with  two spaces", "日本 猫"]
    keys = {it.key for it in ds.train + ds.val + ds.test}
    assert len(keys) == 9 and "café au lait/deep/er/img 2.jpg" in keys  # nested images count, as ImageFolder
    assert all((ds.root / k).is_file() for k in keys)


@pytest.mark.parametrize("csv_text, message", [
    (b"\xef\xbb\xbfpath,split\r\ncat/cat_0.jpg,train\r\n\r\n", None),
    (b"path,split\ncat/cat_0.jpg,train\ncat/cat_0.jpg,test\n", r"split\.csv:3: duplicate image .*first at line 2"),
    (b"path,split\ncat/cat_0.jpg,train,extra\n", r"split\.csv:2: expected 2 fields \(path,split\), got 3"),
    (b"path,split\ncat/cat_0.jpg\n", r"split\.csv:2: expected 2 fields"),
    (b"path,split\n../cat/cat_0.jpg,train\n", r"split\.csv:2: expected a relative image path"),
    (bytes(range(256)), r"split\.csv: not UTF-8 text"),
    (b"path,split\n", r"split\.csv: no rows"),
    (b"path,split\n" + b"a" * 200000 + b",train\n", r"split\.csv:\d+: malformed CSV"),
])  # fmt: skip
def test_imagefolder_split_csv_defects_are_named(tmp_path, csv_text, message):
    make_dataset_tree("imagefolder", tmp_path, images_per_class=2, num_classes=2)
    (tmp_path / "split.csv").write_bytes(csv_text)
    if message is None:
        assert [it.key for it in load_dataset("imagefolder", tmp_path, {"split_file": "split.csv"}).train] == [
            "cat/cat_0.jpg"
        ]
        return
    with pytest.raises(DatasetError, match=message):
        load_dataset("imagefolder", tmp_path, {"split_file": "split.csv"})


def test_template_option_with_other_braces_is_refused(tmp_path):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    with pytest.raises(DatasetError, match=r"options\.template: expected one '\{\}'"):
        load_dataset("eurosat", root, {"template": "a {} of {kind}"})


@pytest.mark.parametrize("name", sorted(RAW_LISTS))
def test_data_check_reports_a_damaged_list_in_one_line(tmp_path, capsys, name):
    from tailprompt.cli import main

    rel, options = RAW_LISTS[name]
    root, folder = _tree(tmp_path, name, n=3)
    (folder / rel).write_bytes(b"\xff\xfe garbage")
    argv = ["data", "check", "--dataset", name, "--root", str(root)]
    argv += [a for k, v in options.items() for a in ("--option", f"{k}={str(v).lower()}")]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 1 and f"  {folder / rel}: not UTF-8 text" in out.out
    assert "Traceback" not in out.out + out.err and "unexpected" not in out.err
    assert out.out.count("problem(s)") == 1 and "1 problem(s)" in out.out
