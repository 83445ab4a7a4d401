"""`tailprompt data check|sample` and `tailprompt features` end to end (in-process CLI)."""

from __future__ import annotations

import json

import pytest

from tailprompt.cli import main
from tailprompt.testing.images import decompression_bomb_png
from tailprompt.testing.trees import make_dataset_tree, make_eurosat_tree


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def sample_json(capsys, root, seed: int) -> dict:
    code, out, _ = run(
        capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--shots", "16",
        "--tau", "0.06", "--seed", str(seed), "--classes", "base", "--json",
    )  # fmt: skip
    assert code == 0
    return json.loads(out)


def test_done_when_sample_json(tmp_path, capsys):
    root = make_eurosat_tree(tmp_path)
    first = sample_json(capsys, root, seed=1)
    assert list(first) == ["dataset", "seed", "counts", "ids"]
    assert first["dataset"] == "eurosat" and first["seed"] == 1
    assert list(first["counts"].values()) == [16, 7, 3, 1, 1]
    assert list(first["counts"]) == list(first["ids"]) == [
        "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
    ]  # fmt: skip
    assert (
        first["ids"]["Forest"][0].startswith("2750/Forest/")
        and (root / "eurosat" / first["ids"]["Forest"][0]).is_file()
    )
    assert sample_json(capsys, root, seed=1) == first
    second_seed = sample_json(capsys, root, seed=2)
    assert list(second_seed["counts"].values()) == [16, 7, 3, 1, 1] and second_seed["ids"] != first["ids"]


def test_sample_reuses_fewshot_ids_and_prints_a_table(tmp_path, capsys):
    root = make_eurosat_tree(tmp_path)
    record = sample_json(capsys, root, seed=1)
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(record))
    code, out, _ = run(
        capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--classes", "base",
        "--fewshot-ids", str(ids), "--seed", "5", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["ids"] == record["ids"]
    code, out, _ = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--classes", "new")
    assert code == 0 and "Pasture Land" in out and "Forest" not in out and "80 training images" in out


def test_check_reports_classes_and_counts(tmp_path, capsys):
    root = make_dataset_tree("oxford_pets", tmp_path)
    code, out, _ = run(capsys, "data", "check", "--dataset", "oxford_pets", "--root", str(root))
    assert code == 0 and out.rstrip().endswith("OK")
    assert "6 classes; images: train 24  val 6  test 6" in out and "american_pit_bull_terrier" in out


def test_check_names_a_deleted_image_and_exits_nonzero(tmp_path, capsys):
    root = make_eurosat_tree(tmp_path, images_per_class=5)
    missing = root / "eurosat/2750/Forest/Forest_2.jpg"
    missing.unlink()
    code, out, err = run(capsys, "data", "check", "--dataset", "eurosat", "--root", str(root))
    assert code == 1
    assert f"{missing.resolve()}: listed image is missing" in out and "1 problem(s)" in out
    assert "Traceback" not in out + err


def test_check_names_unreadable_images(tmp_path, capsys):
    root = make_dataset_tree("sun397", tmp_path)
    garbage = root / "sun397/SUN397/a/abbey/sun_00000000.jpg"
    garbage.write_bytes(b"not an image")
    truncated = root / "sun397/SUN397/b/bedroom/sun_00300000.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-60])  # header intact, scan data cut
    code, out, _ = run(capsys, "data", "check", "--dataset", "sun397", "--root", str(root))
    assert code == 1 and f"{garbage.resolve()}: unreadable image" in out and str(truncated.resolve()) not in out
    code, out, _ = run(capsys, "data", "check", "--dataset", "sun397", "--root", str(root), "--deep")
    assert code == 1 and f"{truncated.resolve()}: unreadable image" in out and "2 problem(s)" in out
    bomb = root / "sun397/SUN397/b/bedroom/sun_00300000.jpg"
    bomb.write_bytes(decompression_bomb_png())  # PIL refuses it with an error that is not an OSError
    for deep in ([], ["--deep"]):
        code, out, _ = run(capsys, "data", "check", "--dataset", "sun397", "--root", str(root), *deep)
        assert code == 1 and f"{bomb.resolve()}: unreadable image (Image size (10000000000 pixels)" in out


@pytest.mark.parametrize("damage", ["folder", "split_missing", "split_malformed"])
def test_check_layout_errors_are_reports_not_tracebacks(tmp_path, capsys, damage):
    root = make_dataset_tree("dtd", tmp_path, images_per_class=3, num_classes=2)
    split = root / "dtd/split_zhou_DescribableTextures.json"
    if damage == "folder":
        expected = f"{tmp_path / 'nowhere' / 'dtd'}: missing folder"
        root = tmp_path / "nowhere"
    elif damage == "split_missing":
        split.unlink()
        expected = f"{split}: missing split file"
    else:
        split.write_text('{"train": [["banded/banded_0001.jpg", 0]], "val": [], "test": []}')
        expected = f"{split}: malformed split file, train[0]"
    code, out, err = run(capsys, "data", "check", "--dataset", "dtd", "--root", str(root))
    assert code == 1 and expected in out and "Traceback" not in out + err


def test_user_mistakes_give_one_line_and_exit_2(tmp_path, capsys):
    root = make_eurosat_tree(tmp_path, images_per_class=3)
    code, _, err = run(capsys, "data", "check", "--dataset", "eurosatt", "--root", str(root))
    assert code == 2 and "unknown dataset 'eurosatt'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--option", "nope=1")
    assert code == 2 and "nope" in err
    code, _, err = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(tmp_path / "x"))
    assert code == 2 and "missing folder" in err
    code, _, err = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--tau", "2")
    assert code == 2 and "tau must be in (0, 1]" in err
    make_dataset_tree("imagenet_r", tmp_path, images_per_class=2)
    code, _, err = run(capsys, "data", "sample", "--dataset", "imagenet_r", "--root", str(tmp_path))
    assert code == 2 and "no training split" in err
    with pytest.raises(SystemExit) as exc:
        main(["data", "sample", "--root", str(root)])  # argparse: missing --dataset
    assert exc.value.code == 2


def test_features_command_caches_then_hits(tmp_path, capsys):
    root = make_eurosat_tree(tmp_path / "data", images_per_class=3)
    argv = [
        "features", "--backbone", "tiny-vit", "--dataset", "eurosat", "--root", str(root), "--views", "1",
        "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--shots", "1", "--seeds", "1",
    ]  # fmt: skip
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "train view 0: 10 images, 0 hits, 10 misses" in out and "train view 1: 10 images" in out
    assert "test  view 0: 10 images" in out and "total: 0 hits, 40 misses" in out
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "total: 40 hits, 0 misses" in out
    code, _, err = run(capsys, *argv, "--splits", "train,holdout")
    assert code == 2 and "--splits" in err
    broken = root / "eurosat/2750/River/River_3.jpg"
    for content in (b"not a jpeg", decompression_bomb_png()):
        broken.write_bytes(content)
        code, _, err = run(capsys, *argv, "--splits", "test")
        assert code == 2 and f"{broken.resolve()}: cannot read image" in err and "Traceback" not in err
    code, _, err = run(capsys, *argv[:2], "no-such-arch", *argv[3:])
    assert code == 2 and "no-such-arch" in err


@pytest.mark.parametrize("counts, message", [
    ({"Forest": "x"}, "['Forest']: expected an integer in 1..4 (shots), got 'x'"),
    ({"Forest": -1}, "['Forest']: expected an integer in 1..4 (shots), got -1"),
    ({"Forest": 2}, ": no count for class(es)"),
])
def test_a_bad_counts_file_is_named(tmp_path, capsys, counts, message):
    root = make_eurosat_tree(tmp_path / "data", images_per_class=3)
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(counts))
    code, _, err = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--shots", "4",
                       "--profile", "counts", "--counts", str(path))
    assert code == 2 and f"{path}{message}" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "data", "sample", "--dataset", "eurosat", "--root", str(root), "--profile", "counts")
    assert code == 2 and "needs a counts file" in err and "--counts" in err


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["--shots", "1", "--seeds", "1", "-2"], "--seeds: expected an integer >= 0, got -2"),
    (["--views", "-1"], "--views: expected an integer >= 0, got -1"),
    (["--cache-dir", "{tmp}/file.txt/cache"], "cache folder is not writable ({tmp}/file.txt is a file, not a folder)"),
    (["--device", "tpu"], "error: --device: 'tpu' is not a device name (expected auto, cpu, cuda or cuda:N)"),
])
def test_features_options_out_of_range_are_one_line(tmp_path, capsys, extra, message):
    root = make_eurosat_tree(tmp_path / "data", images_per_class=3)
    (tmp_path / "file.txt").write_text("x")
    argv = ["features", "--backbone", "tiny-vit", "--dataset", "eurosat", "--root", str(root), "--splits", "test",
            "--cache-dir", str(tmp_path / "cache"), *(a.format(tmp=tmp_path) for a in extra)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "features").exists()
