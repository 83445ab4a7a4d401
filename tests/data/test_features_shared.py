"""Feature cache shared by concurrent jobs: one writer per view folder, the others wait and reuse its shards."""

from __future__ import annotations

import threading
import time

import torch
from torchvision import transforms as T

from tailprompt.data import load_dataset
from tailprompt.data.features import FeatureCache
from tailprompt.testing.trees import make_eurosat_tree


class SlowStandIn(torch.nn.Module):
    """The slice of FrozenVLM the cache uses; slow enough that two fills overlap; counts encoded images."""

    def __init__(self) -> None:
        super().__init__()
        self.identity, self.preprocess_id = "standin:shared", "s8"
        self.embed_dim, self.device, self.dtype = 6, torch.device("cpu"), torch.float32
        self.weight = torch.randn(6, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))
        self.preprocess_eval = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])
        self.preprocess_train = self.preprocess_eval
        self.encoded = 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        self.encoded += len(images)
        return images.flatten(1) @ self.weight.T


def test_concurrent_fills_encode_each_image_once(tmp_path):
    ds = load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=3))
    model = SlowStandIn()
    caches = [FeatureCache(tmp_path / "cache") for _ in range(3)]  # three jobs, each its own cache object
    outs: list[torch.Tensor] = []
    start = threading.Barrier(len(caches))

    def job(cache: FeatureCache) -> None:
        start.wait()
        outs.append(cache.get(model, ds, ds.train, view=0, batch_size=2))

    threads = [threading.Thread(target=job, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert model.encoded == len(ds.train)  # one writer; the two others reused its shards
    assert sorted(c.misses for c in caches) == [0, 0, len(ds.train)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert not list((tmp_path / "cache").rglob("*.lock"))


def test_ranks_of_one_job_split_the_misses(tmp_path):
    """Under torchrun every rank calls `get` with the same items; each encodes its share, all read all."""
    ds = load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=3))
    models = [SlowStandIn(), SlowStandIn()]
    meeting = threading.Barrier(2)
    outs: dict[int, torch.Tensor] = {}

    class Rank:
        def __init__(self, rank: int) -> None:
            self.rank, self.world_size = rank, 2

        def barrier(self) -> None:
            meeting.wait()

    def rank_job(rank: int) -> None:
        cache = FeatureCache(tmp_path / "cache")
        outs[rank] = cache.get(models[rank], ds, ds.train, view=1, batch_size=2, shard=Rank(rank))

    threads = [threading.Thread(target=rank_job, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    n = len(ds.train)
    assert [m.encoded for m in models] == [(n + 1) // 2, n // 2]
    single = FeatureCache(tmp_path / "other").get(SlowStandIn(), ds, ds.train, view=1, batch_size=2)
    assert torch.equal(outs[0], outs[1]) and torch.allclose(outs[0], single, atol=1e-6)
