"""World datasets: deterministic rendering per seed, splits, registration, options, the render cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tailprompt.data.registry import DATASETS, load_dataset
from tailprompt.schema import ConfigError
from tailprompt.world import datasets as world_datasets
from tailprompt.world import pretrain as world_pretrain
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab


def _pixels(ds, items) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(ds.load_image(it))) for it in items])


def test_rendering_is_deterministic_per_seed_and_differs_across_seeds():
    a = load_dataset("world_colour_shape_clean", None, {"seed": 3})
    b = load_dataset("world_colour_shape_clean", None, {"seed": 3})
    c = load_dataset("world_colour_shape_clean", None, {"seed": 4})
    items = a.test[:5] + a.test[300:303]
    assert torch.equal(_pixels(a, items), _pixels(b, items))
    other = [c.test[i] for i in (0, 1, 2, 3, 4, 300, 301, 302)]
    assert not torch.equal(_pixels(a, items), _pixels(c, other))
    # identities name generator spec, seed and index, so the feature cache keeps seeds apart
    assert a.image_identity(items[0]) != c.image_identity(other[0])
    assert a.image_identity(items[0]) == b.image_identity(items[0])


def test_splits_are_disjoint_scenes_and_load_image_matches_batch_rendering():
    ds = load_dataset("world_size_colour_shape_noisy", None, {})
    vocab = world_vocab.VOCABULARIES["size_colour_shape"]
    train, labels = world_datasets.render_split(vocab, "noisy", "train", 0, 32)
    assert train.shape == (32 * 72, 32, 32, 3) and torch.equal(labels[:80], torch.arange(80) % 72)
    for idx in (0, 257, 1000):
        img = ds.load_image(ds.train[idx])
        assert img.mode == "RGB" and img.size == (32, 32)
        assert torch.equal(torch.from_numpy(np.array(img)), train[idx])
    test, _ = world_datasets.render_split(vocab, "noisy", "test", 0, 1)
    assert not torch.equal(test[:72], train[:72])


def test_every_registered_world_dataset_has_the_promised_shape():
    names = DATASETS.names("world*")
    assert "world" in names and set(world_datasets.dataset_names()) <= set(names)
    assert len(world_datasets.dataset_names()) == len(world_vocab.VOCABULARIES) * len(world_render.STYLES)
    for name in ("world", "world_texture_shape_blurred"):
        ds = load_dataset(name, "/does/not/matter", {})
        k = ds.num_classes
        assert 20 <= k <= 80
        assert len(ds.train) == 32 * k and len(ds.val) == 8 * k and len(ds.test) >= 100 * k
        assert all(it.key.startswith("world:") for it in ds.train[:3])
        per_class = torch.bincount(torch.tensor([it.label for it in ds.test]), minlength=k)
        assert int(per_class.min()) >= 100
        assert "{}" in ds.template and ds.root is None
        assert {it.domain for it in ds.test[:50]} == {ds.domain}
    assert load_dataset("world", None, {}).name == world_datasets.DEFAULT_DATASET
    # tuning has a shift to learn
    assert world_datasets.DEFAULT_DATASET.rsplit("_", 1)[1] != world_pretrain.PRETRAIN_STYLE


def test_bad_options_and_foreign_keys_are_errors_naming_the_problem():
    with pytest.raises(ConfigError, match="test_per_clas"):
        load_dataset("world", None, {"test_per_clas": 5})
    with pytest.raises(ConfigError, match="train_per_class"):
        load_dataset("world", None, {"train_per_class": 0})
    ds = load_dataset("world_colour_shape_clean", None, {})
    other = load_dataset("world_colour_shape_noisy", None, {})
    with pytest.raises(ValueError, match="does not belong"):
        ds.load_image(other.test[0])


def test_the_render_cache_stays_small_and_serves_repeated_loads():
    renderer = world_datasets.WorldRenderer(world_vocab.VOCABULARIES["texture_shape"], "clean", seed=0, cache_chunks=2)
    first = renderer.chunk("test", 0)
    assert renderer.chunk("test", 0) is first  # a second item of the same chunk renders nothing
    for c in range(1, 6):
        renderer.chunk("test", c)
    assert len(renderer._cache) == 2
    assert torch.equal(renderer.chunk("test", 0), first)  # re-rendered identically after eviction


def test_world_datasets_carry_descriptions_and_the_data_command_writes_them(tmp_path, capsys):
    import json

    from tailprompt.cli import main

    ds = load_dataset("world", None, {})
    assert ds.descriptions is not None and set(ds.descriptions) == set(ds.classnames)
    out = tmp_path / "descriptions.json"
    assert main(["data", "descriptions", "--dataset", "world", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written) == ds.classnames and written == ds.descriptions
    assert "descriptions" in capsys.readouterr().out

    from tailprompt.testing.trees import make_eurosat_tree

    root = make_eurosat_tree(tmp_path / "data", images_per_class=3)
    args = ["data", "descriptions", "--dataset", "eurosat", "--root", str(root), "--out", str(tmp_path / "e.json")]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0 and "no descriptions" in err and "Traceback" not in err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("target, message", [
    ("folder", "--out {out}: is a folder, expected a file path"),
    ("under_file", "folder of --out is not writable ({tmp}/file.txt is a file, not a folder)"),
])
def test_data_descriptions_out_that_cannot_be_written_is_one_line(tmp_path, capsys, target, message):
    from tailprompt.cli import main

    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "folder" if target == "folder" else tmp_path / "file.txt" / "d.json"
    if target == "folder":
        out.mkdir()
    assert main(["data", "descriptions", "--dataset", "world", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(out=out, tmp=tmp_path) in err[0]
    left = {p.name for p in tmp_path.rglob("*")}
    assert left == ({"file.txt", "folder"} if target == "folder" else {"file.txt"})  # nothing written
