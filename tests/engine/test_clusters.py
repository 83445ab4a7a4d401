import torch

from tailprompt.clustering import ClusterSettings, select_clusters
from tailprompt.engine.clusters import ClusterCache

AUTO = ClusterSettings()


def _prototypes() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g)
    return torch.cat([c + 0.05 * torch.randn(4, 16, generator=g) for c in centres])  # 3 groups of 4


def test_cluster_cache_returns_the_same_partition_and_hits_on_second_call(tmp_path):
    feats = _prototypes()
    cache = ClusterCache(tmp_path)
    first = cache(feats, AUTO)
    assert cache.hits == 0 and len(list((tmp_path / "clusters").glob("*.json"))) == 1
    second = ClusterCache(tmp_path)(feats, AUTO)
    direct = select_clusters(feats, "auto")
    assert torch.equal(first.assignment, direct.assignment) and torch.equal(second.assignment, direct.assignment)
    assert second.criterion == direct.criterion and first.n_clusters == 3


def test_cluster_cache_misses_when_features_or_settings_change(tmp_path):
    feats = _prototypes()
    cache = ClusterCache(tmp_path)
    cache(feats, AUTO)
    cache(feats, ClusterSettings(2))
    cache(feats + 0.01, AUTO)
    assert cache.hits == 0 and len(list((tmp_path / "clusters").glob("*.json"))) == 3
    cache(feats, ClusterSettings(2))
    assert cache.hits == 1


def test_concurrent_jobs_cluster_once_and_share_the_partition(tmp_path, monkeypatch):
    import threading
    import time

    import tailprompt.clustering as clustering

    calls = []
    real_select = clustering.select_clusters

    def slow_select(*args):
        calls.append(1)
        time.sleep(0.3)
        return real_select(*args)

    monkeypatch.setattr(clustering, "select_clusters", slow_select)
    feats = _prototypes()
    results = []
    threads = [threading.Thread(target=lambda: results.append(ClusterCache(tmp_path)(feats, ClusterSettings(2))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(calls) == 1 and len(results) == 3
    assert all(torch.equal(r.assignment, results[0].assignment) for r in results)
