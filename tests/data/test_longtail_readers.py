"""ImageNet-LT, Places-LT and iNaturalist 2018 readers (OLTR lists) on miniature trees in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailprompt.cli import main
from tailprompt.data import DATASETS, DatasetError, load_dataset
from tailprompt.data.readers import SPECS
from tailprompt.data.sampling import sample_training_set
from tailprompt.metrics.classification import threshold_groups
from tailprompt.testing.trees import TREES, make_dataset_tree

LONGTAIL = ["imagenet_lt", "places_lt", "inat2018"]

# name -> (class names in label order, train / val / test images per class of the default tree, a test key)
EXPECTED = {
    "imagenet_lt": (
        ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
        [12, 8, 5, 4, 2, 2], [2] * 6, [3] * 6, "val/n01440764/ILSVRC2012_val_00000001.JPEG",
    ),
    # raw Places365 folder names: `_` stays (learners replace it), -indoor/-outdoor kept
    "places_lt": (
        ["airfield", "apartment_building-outdoor", "booth-indoor", "botanical_garden"],
        [12, 6, 3, 2], [2] * 4, [3] * 4, "val/airfield/Places365_val_00000001.jpg",
    ),
    # categories.json ids, not LIFT's sorted-name relabelling (which would put Argiope first)
    "inat2018": (
        ["Hermodice carunculata", "Phragmatopoma californica", "Quercus agrifolia", "Argiope aurantia"],
        [12, 6, 3, 2], [0] * 4, [3] * 4, None,
    ),
}  # fmt: skip


def per_class(items, k: int) -> list[int]:
    counts = [0] * k
    for it in items:
        counts[it.label] += 1
    return counts


def list_labels(path: Path) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_registered_like_the_other_readers_and_listed(capsys):
    for name in LONGTAIL:
        assert name in DATASETS and name in TREES and SPECS[name].folder == name
    code, out, _ = run(capsys, "list", "datasets")
    listed = out.split("datasets:", 1)[1].split(",")
    assert code == 0 and {"imagenet_lt", "places_lt", "inat2018"} <= {n.strip() for n in listed}


@pytest.mark.parametrize("name", LONGTAIL)
def test_reader_names_labels_split_sizes_and_template(tmp_path, name):
    names, train, val, test, test_key = EXPECTED[name]
    ds = load_dataset(name, make_dataset_tree(name, tmp_path))
    assert ds.classnames == names
    assert ds.template == "a photo of a {}." and ds.templates[-1] == "a photo of a {}."
    k = len(names)
    assert per_class(ds.train, k) == train and per_class(ds.val, k) == val and per_class(ds.test, k) == test
    folder = tmp_path / name
    lists = {s: f for s, f in SPECS[name].lists.items()}
    for split in ("train", "val", "test"):
        items = getattr(ds, split)
        if split not in lists:
            assert items == []
            continue
        labels = list_labels(folder / lists[split])  # the list's label column is kept as is
        assert [it.key for it in items] == list(labels)
        assert all(it.label == labels[it.key] and it.classname == names[it.label] for it in items)
        assert all((ds.root / it.key).is_file() for it in items)
    if test_key:
        assert test_key in {it.key for it in ds.test}
    assert ds.load_image(ds.train[0]).mode == "RGB"


def test_inat_test_is_the_official_val_list(tmp_path):
    ds = load_dataset("inat2018", make_dataset_tree("inat2018", tmp_path, num_classes=2))
    val_list = tmp_path / "inat2018/iNaturalist18_val.txt"
    assert [it.key for it in ds.test] == list(list_labels(val_list))
    assert ds.val == [] and ds.test[0].key.startswith("train_val2018/Animalia/0/")
    cats = json.loads((tmp_path / "inat2018/categories.json").read_text())
    assert cats[0]["name"] == "Hermodice carunculata" and cats[0]["genus"] == "Hermodice"


def test_label_is_the_line_of_classnames_txt(tmp_path):
    root = make_dataset_tree("places_lt", tmp_path)
    names_file = root / "places_lt/classnames.txt"
    names_file.write_text("".join(f"{line}\n" for line in reversed(names_file.read_text().splitlines())))
    ds = load_dataset("places_lt", root)
    assert ds.classnames == ["botanical_garden", "booth-indoor", "apartment_building-outdoor", "airfield"]
    airfield = [it for it in ds.train if it.key.startswith("train/airfield/")]
    assert len(airfield) == 12 and {(it.label, it.classname) for it in airfield} == {(0, "botanical_garden")}


@pytest.mark.parametrize(
    "name, missing",
    [("imagenet_lt", "ImageNet_LT_val.txt"), ("places_lt", "Places_LT_test.txt"),
     ("inat2018", "iNaturalist18_train.txt"), ("places_lt", "classnames.txt"),
     ("imagenet_lt", "classnames.txt"), ("inat2018", "categories.json")],
)  # fmt: skip
def test_missing_list_or_names_file_is_named(tmp_path, name, missing):
    root = make_dataset_tree(name, tmp_path, images_per_class=3, num_classes=2)
    (root / name / missing).unlink()
    with pytest.raises(DatasetError, match="missing file") as e:
        load_dataset(name, root)
    assert str(root / name / missing) in str(e.value)


@pytest.mark.parametrize(
    "line, problem",
    [("train/airfield/x.jpg", "expected 'relative/path label'"), ("train/airfield/x.jpg 0 extra", "expected"),
     ("train/airfield/x.jpg zero", "expected"), ("/abs/x.jpg 0", "relative"), ("train/../x.jpg 0", "relative"),
     ("train/airfield/x.jpg 2", "label 2, but")],
)  # fmt: skip
def test_malformed_list_line_names_file_and_line(tmp_path, line, problem):
    root = make_dataset_tree("places_lt", tmp_path, images_per_class=3, num_classes=2)
    path = root / "places_lt/Places_LT_train.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    with pytest.raises(DatasetError) as e:
        load_dataset("places_lt", root)
    assert f"{path}:3:" in str(e.value) and problem in str(e.value)
    if problem.startswith("label"):
        assert str(root / "places_lt/classnames.txt") in str(e.value)


def test_names_file_problems_are_named(tmp_path):
    root = make_dataset_tree("imagenet_lt", tmp_path, images_per_class=3, num_classes=2)
    names_file = root / "imagenet_lt/classnames.txt"
    names_file.write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(DatasetError, match=f"{names_file}:2: expected 'folder class name'"):
        load_dataset("imagenet_lt", root)
    # a class no list uses would silently shrink or shift the label space
    names_file.write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    with pytest.raises(DatasetError, match=r"1 of 3 classes have no image .*great white shark") as e:
        load_dataset("imagenet_lt", root)
    assert str(names_file) in str(e.value) and "ImageNet_LT_train.txt" in str(e.value)


def test_categories_json_problems_are_named(tmp_path):
    root = make_dataset_tree("inat2018", tmp_path, images_per_class=3, num_classes=2)
    path = root / "inat2018/categories.json"
    cats = json.loads(path.read_text())
    for bad, message in [
        ("{not json", "not valid JSON"),
        (json.dumps({"0": "x"}), "expected a non-empty list"),
        (json.dumps([cats[0], {"id": 1}]), r"category \[1\]: expected"),
        (json.dumps([cats[0], {**cats[1], "id": 5}]), r"ids must be 0..1; missing \[1\]"),
        (json.dumps([cats[0], {**cats[1], "id": 0}]), "id 0 appears twice"),
    ]:
        path.write_text(bad)
        with pytest.raises(DatasetError, match=message) as e:
            load_dataset("inat2018", root)
        assert str(path) in str(e.value)
    path.write_text(json.dumps(list(reversed(cats))))  # ids, not positions, give the labels
    assert load_dataset("inat2018", root).classnames == ["Hermodice carunculata", "Phragmatopoma californica"]


def test_data_check_passes_then_names_a_deleted_image(tmp_path, capsys):
    root = make_dataset_tree("places_lt", tmp_path)
    code, out, _ = run(capsys, "data", "check", "--dataset", "places_lt", "--root", str(root))
    assert code == 0 and out.rstrip().endswith("OK")
    assert "4 classes; images: train 23  val 8  test 12" in out and "booth-indoor" in out
    missing = root / "places_lt/train/booth-indoor/00000002.jpg"
    missing.unlink()
    code, out, err = run(capsys, "data", "check", "--dataset", "places_lt", "--root", str(root))
    assert code == 1 and f"{missing.resolve()}: listed image is missing" in out and "1 problem(s)" in out
    assert "Traceback" not in out + err


def test_missing_list_in_cli_is_one_line(tmp_path, capsys):
    root = make_dataset_tree("inat2018", tmp_path, images_per_class=3, num_classes=2)
    (root / "inat2018/iNaturalist18_val.txt").unlink()
    code, out, _ = run(capsys, "data", "check", "--dataset", "inat2018", "--root", str(root))
    assert code == 1 and f"{root / 'inat2018/iNaturalist18_val.txt'}: missing file" in out


def test_whole_long_tailed_train_set_and_many_medium_few(tmp_path, capsys):
    # n=55 -> train 110 / 44 / 18: one class per many (>100) / medium (20-100) / few (<20) group
    root = make_dataset_tree("imagenet_lt", tmp_path, images_per_class=55, num_classes=3)
    ds = load_dataset("imagenet_lt", root)
    full = per_class(ds.train, 3)
    assert full == [110, 44, 18]
    ts = sample_training_set(ds, shots=100000, tau=1.0, seed=1)
    assert list(ts.counts.values()) == full and sorted(it.key for it in ts.items) == sorted(it.key for it in ds.train)
    assert threshold_groups(list(ts.counts.values())) == {"many": [0], "medium": [1], "few": [2]}
    assert len(ts.val_items) == 3 * 4  # few-shot val stays capped at 4 per class
    code, out, _ = run(
        capsys, "data", "sample", "--dataset", "imagenet_lt", "--root", str(root), "--shots", "100000", "--json"
    )
    assert code == 0 and json.loads(out)["counts"] == {"tench": 110, "goldfish": 44, "great white shark": 18}


def test_list_quirks_accepted_and_line_numbers_count_every_line(tmp_path):
    root = make_dataset_tree("places_lt", tmp_path, images_per_class=3, num_classes=2)
    path = root / "places_lt/Places_LT_train.txt"
    lines = path.read_text().splitlines()
    expected = load_dataset("places_lt", root).train
    path.write_bytes(b"\xef\xbb\xbf# OLTR list\r\n\r\n" + "\r\n".join(f"{line}  " for line in lines).encode())
    assert load_dataset("places_lt", root).train == expected
    path.write_text("\n\n".join([*lines, "train/airfield/x.jpg -1"]) + "\n")
    with pytest.raises(DatasetError, match=rf"{path}:{2 * len(lines) + 1}: expected a label \(an integer >= 0\)"):
        load_dataset("places_lt", root)


def test_a_path_with_spaces_keeps_the_last_field_as_label(tmp_path):
    root = make_dataset_tree("places_lt", tmp_path, images_per_class=3, num_classes=2)
    path = root / "places_lt/Places_LT_test.txt"
    path.write_text(path.read_text() + "val/airfield/my photo.jpg 0\n")
    assert "val/airfield/my photo.jpg" in {it.key for it in load_dataset("places_lt", root).test}


def test_categories_json_bom_and_deep_nesting(tmp_path):
    root = make_dataset_tree("inat2018", tmp_path, images_per_class=3, num_classes=2)
    path = root / "inat2018/categories.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_dataset("inat2018", root).classnames) == 2
    path.write_text("[" * 100000)
    with pytest.raises(DatasetError, match=f"{path}: not valid JSON"):
        load_dataset("inat2018", root)
