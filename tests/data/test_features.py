"""Feature cache: hits on the second pass, misses on any key change, atomic shards, seeded views."""

from __future__ import annotations

import shutil

import pytest
import torch
from torchvision import transforms as T

from tailprompt.data import load_dataset
from tailprompt.data.features import FeatureCache, compute_features, default_cache_dir
from tailprompt.testing.trees import make_eurosat_tree


class StandIn(torch.nn.Module):
    """The slice of FrozenVLM the cache uses; counts how many images it encodes."""

    def __init__(self, identity: str = "standin:0", preprocess_id: str = "s8") -> None:
        super().__init__()
        self.identity, self.preprocess_id = identity, preprocess_id
        self.embed_dim, self.device, self.dtype = 6, torch.device("cpu"), torch.float32
        weight = torch.randn(6, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))
        self.register_buffer("weight", weight)
        self.preprocess_eval = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])
        self.preprocess_train = T.Compose(
            [T.RandomResizedCrop(8, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()]
        )
        self.encoded = 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += len(images)
        return images.flatten(1) @ self.weight.T


@pytest.fixture()
def eurosat(tmp_path):
    return load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=3))


def test_second_pass_hits_and_recomputes_nothing(eurosat, tmp_path):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache")
    first = cache.get(model, eurosat, eurosat.train, view=0, batch_size=4)
    assert first.shape == (10, 6) and first.dtype == torch.float32
    assert (cache.hits, cache.misses, model.encoded) == (0, 10, 10)
    second = cache.get(model, eurosat, eurosat.train, view=0)
    assert (cache.hits, cache.misses, model.encoded) == (10, 10, 10)
    assert torch.equal(first, second)
    assert torch.allclose(first, compute_features(model, eurosat, eurosat.train, view=0), atol=1e-5)
    fresh = FeatureCache(tmp_path / "cache")  # another process: reads the shards from disk
    assert torch.equal(fresh.get(model, eurosat, eurosat.train[::-1], view=0), first.flip(0))
    assert (fresh.hits, fresh.misses, model.encoded) == (10, 0, 20)  # 10 more only from compute_features


def test_changed_image_misses_only_that_image(eurosat, tmp_path):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache")
    before = cache.get(model, eurosat, eurosat.test, view=0)
    changed = eurosat.root / eurosat.test[0].key
    changed.write_bytes((eurosat.root / eurosat.test[1].key).read_bytes())  # a different picture, same path
    after = cache.get(model, eurosat, eurosat.test, view=0)
    assert cache.misses == len(eurosat.test) + 1 and cache.hits == len(eurosat.test) - 1
    assert not torch.equal(before[0], after[0]) and torch.equal(before[1:], after[1:])
    assert torch.allclose(after[0], after[1], atol=1e-5)  # now the same picture (batch size 1 vs 10)


@pytest.mark.parametrize("change", ["identity", "preprocess_id", "view"])
def test_any_key_change_misses(eurosat, tmp_path, change):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(StandIn(), eurosat, eurosat.val, view=0)
    other, view = StandIn(), 0
    if change == "identity":
        other = StandIn(identity="standin:1")
    elif change == "preprocess_id":
        other = StandIn(preprocess_id="s8-other")
    else:
        view = 1
    cache.get(other, eurosat, eurosat.val, view=view)
    assert cache.misses == 2 * len(eurosat.val) and cache.hits == 0 and other.encoded == len(eurosat.val)


def test_training_views_are_seeded_per_view_and_image(eurosat, tmp_path):
    model = StandIn()
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    v1 = FeatureCache(tmp_path / "a").get(model, eurosat, eurosat.train, view=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG neither used nor advanced
    torch.manual_seed(99)
    v1_again = FeatureCache(tmp_path / "b").get(model, eurosat, eurosat.train[::-1], view=1)
    assert torch.equal(v1, v1_again.flip(0))  # same view of the same image, whatever the order or RNG
    v2 = FeatureCache(tmp_path / "a").get(model, eurosat, eurosat.train, view=2)
    v0 = FeatureCache(tmp_path / "a").get(model, eurosat, eurosat.train, view=0)
    assert not torch.allclose(v1, v2) and not torch.allclose(v1, v0)


def test_duplicates_and_empty_requests(eurosat, tmp_path):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache")
    a, b = eurosat.train[:2]
    out = cache.get(model, eurosat, [a, b, a], view=0)
    assert cache.misses == 2 and model.encoded == 2 and torch.equal(out[0], out[2])
    assert cache.get(model, eurosat, [], view=0).shape == (0, 6)
    with pytest.raises(ValueError, match="view"):
        cache.get(model, eurosat, [a], view=-1)


def test_interrupted_run_leaves_only_complete_shards(eurosat, tmp_path):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache")
    real_encode, calls = model.encode_image, []

    def crash_on_second_batch(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_encode(images)

    model.encode_image = crash_on_second_batch
    with pytest.raises(RuntimeError, match="killed"):
        cache.get(model, eurosat, eurosat.train, view=0, batch_size=4)
    view_dir = cache.space_dir(model) / "view0"
    assert len(list(view_dir.glob("*.safetensors"))) == 1 and not list(view_dir.glob(".*"))
    model.encode_image = real_encode
    resumed = FeatureCache(tmp_path / "cache")
    resumed.get(model, eurosat, eurosat.train, view=0, batch_size=4)
    assert (resumed.hits, resumed.misses) == (4, 6)


def test_concurrent_writers_of_the_same_entries(eurosat, tmp_path):
    """Two processes that both miss each rename a complete shard into place; readers see one value."""
    model = StandIn()
    a, b = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "b")
    fa, fb = a.get(model, eurosat, eurosat.val, view=0), b.get(model, eurosat, eurosat.val, view=0)
    shared = a.space_dir(model) / "view0"
    for shard in (b.space_dir(model) / "view0").glob("*.safetensors"):  # the second writer's shard lands
        shutil.copy(shard, shared / shard.name)
    assert len(list(shared.glob("*.safetensors"))) == 2
    reader = FeatureCache(tmp_path / "a")
    assert torch.equal(reader.get(model, eurosat, eurosat.val, view=0), fa) and torch.equal(fa, fb)
    assert reader.misses == 0 and model.encoded == 2 * len(eurosat.val)


def test_damaged_shard_is_ignored_and_recomputed(eurosat, tmp_path, caplog):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache")
    cache.get(model, eurosat, eurosat.val, view=0)
    shard = next((cache.space_dir(model) / "view0").glob("*.safetensors"))
    shard.write_bytes(b"garbage")
    fresh = FeatureCache(tmp_path / "cache")
    fresh.get(model, eurosat, eurosat.val, view=0)
    assert fresh.misses == len(eurosat.val) and "unreadable shard" in caplog.text


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TAILPROMPT_CACHE", str(tmp_path / "x"))
    assert FeatureCache().root == tmp_path / "x" == default_cache_dir()


def test_real_tiny_vit_backbone(eurosat, tmp_path):
    from tailprompt.backbone import load_backbone

    model = load_backbone("tiny-vit")
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get(model, eurosat, eurosat.val, view=1)
    again = cache.get(model, eurosat, eurosat.val, view=1)
    assert first.shape == (len(eurosat.val), model.embed_dim) and torch.equal(first, again)
    assert (cache.hits, cache.misses) == (len(eurosat.val), len(eurosat.val))
    key = (cache.space_dir(model) / "key.json").read_text()
    assert model.identity in key and model.preprocess_id in key


def test_worker_processes_give_the_same_cached_features(tmp_path):
    from tailprompt.backbone import load_backbone
    from tailprompt.data.features import FeatureCache
    from tailprompt.data.registry import load_dataset
    from tailprompt.testing.trees import make_eurosat_tree

    ds = load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=4))
    backbone = load_backbone("tiny-vit")
    items = ds.train
    serial = FeatureCache(tmp_path / "a").get(backbone, ds, items, view=1, batch_size=8)
    parallel = FeatureCache(tmp_path / "b", num_workers=2).get(backbone, ds, items, view=1, batch_size=8)
    assert torch.equal(serial, parallel)


def test_progress_bar_shows_images_per_second_for_misses_only(eurosat, tmp_path, capsys):
    model, cache = StandIn(), FeatureCache(tmp_path / "cache", progress=True)
    n = len({cache.entry_key(eurosat, it) for it in eurosat.val})
    cache.get(model, eurosat, eurosat.val, view=0)
    err = capsys.readouterr().err
    assert "img/s" in err and f"{n}/{n}" in err and "(fp32)" in err
    cache.get(model, eurosat, eurosat.val, view=0)  # all hits: nothing decoded, encoded or shown
    assert capsys.readouterr().err == "" and model.encoded == n
    cache.get(model, eurosat, eurosat.test, view=0, progress=False)
    assert capsys.readouterr().err == ""


def test_cpu_encoding_runs_in_chunks_with_the_same_features(monkeypatch):
    from tailprompt.data import features

    model, sizes = StandIn(), []
    original = model.encode_image
    model.encode_image = lambda images: sizes.append(len(images)) or original(images)
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(features, "CPU_ENCODE_CHUNK", 4)
    chunked = features.encode_batch(model, images)
    assert sizes == [4, 4, 2]  # bounded activations on a CPU
    assert torch.allclose(chunked, images.flatten(1) @ model.weight.T, atol=1e-6)
    assert features.encode_batch(model, images[:0]).shape == (0, 6)
