"""The default embedded benchmark has the structure the regime needs (issue 13, criterion vi), fast.

The behavioural criteria (zero-shot range, CoOp's gains and losses, the long-tail cost) take minutes of
training and live in `benchmarks/world_regime.py`; this checks what can be checked in seconds: enough
classes, real semantic clusters among the frozen base-class prototypes, and the augmentation defaults.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark_scripts import benchmark_script
from tailprompt.commands.demo import sweep_file
from tailprompt.data.augment import COOP_AUGMENT, resolve_augment
from tailprompt.data.registry import load_dataset
from tailprompt.data.sampling import select_classes
from tailprompt.engine.sweep import read_sweep
from tailprompt.world import datasets as world_datasets


@pytest.fixture(scope="module")
def embedded():
    from tailprompt.backbone import load_backbone

    return load_backbone("embedded")


@pytest.mark.parametrize("name", world_datasets.BENCHMARK_DATASETS)
def test_benchmark_datasets_have_at_least_40_classes_split_evenly(name):
    ds = load_dataset(name, None, {})
    base, new = select_classes(ds, "base"), select_classes(ds, "new")
    assert ds.num_classes >= 40 and abs(base.num_classes - new.num_classes) <= 1


@pytest.mark.parametrize("name", world_datasets.BENCHMARK_DATASETS)
def test_frozen_base_prototypes_have_real_semantic_clusters(name, embedded):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    base = select_classes(load_dataset(name, None, {}), "base")
    with torch.no_grad():
        tokens = embedded.tokenize([base.template.format(c) for c in base.classnames])
        feats = F.normalize(embedded.encode_text(tokens), dim=-1).double().numpy()
    scores = {m: silhouette_score(feats, KMeans(m, n_init=10, random_state=0).fit_predict(feats), metric="cosine")
              for m in range(3, 13)}
    best = max(scores, key=scores.__getitem__)
    assert scores[best] > 0.1, scores
    # the clusters are semantic: classes in one cluster share an attribute word far more often than chance
    labels = KMeans(best, n_init=10, random_state=0).fit_predict(feats)
    words = [set(c.split()) for c in base.classnames]
    same = np.array([[bool(words[i] & words[j]) for j in range(len(words))] for i in range(len(words))])
    together = labels[:, None] == labels[None, :]
    off = ~np.eye(len(words), dtype=bool)
    assert same[together & off].mean() > same[~together].mean() + 0.2


def test_world_datasets_default_to_a_gentle_crop_and_the_demo_keeps_it():
    for name in world_datasets.dataset_names():
        ds = load_dataset(name, None, {})
        assert ds.augment is world_datasets.AUGMENT and ds.augment.crop_scale[0] >= 0.5
        assert resolve_augment(None, ds.augment) != COOP_AUGMENT
    spec = read_sweep(sweep_file(quick=False))
    assert not any(key.startswith("data.augment") for key in {*spec.fixed, *spec.grid})
    assert spec.fixed["data.name"] in ("world", *world_datasets.BENCHMARK_DATASETS)


def test_regime_script_reads_each_runs_result_and_stops_on_a_failed_run(tmp_path, monkeypatch):
    import json

    from tailprompt.engine import sweep

    regime = benchmark_script("world_regime")
    seen = []

    def fake_run_all(configs, progress=True, on_result=None, log_path=None):
        reports = []
        for cfg in configs:
            run_dir = tmp_path / f"{cfg.method}-{cfg.data.tau}-{cfg.seed}"
            run_dir.mkdir(exist_ok=True)
            (run_dir / "result.json").write_text(json.dumps({"method": cfg.method, "seed": cfg.seed}))
            seen.append(cfg.backbone.name)
            reports.append(sweep.JobReport(str(run_dir), "ran" if cfg.seed == 1 else "done"))
        return reports

    monkeypatch.setattr(sweep, "run_all", fake_run_all)
    results = regime.run_rows("world", [1, 2], str(tmp_path / "runs"), ["backbone.name=embedded-vit"])
    assert sorted(results) == ["coop", "coop_tau0.06", "kgcoop", "zeroshot"]
    assert [r["seed"] for r in results["coop"]] == [1, 2] and len(results["zeroshot"]) == 1
    assert set(seen) == {"embedded-vit"}  # the overrides reach every run

    def failing(configs, progress=True, on_result=None, log_path=None):
        return [sweep.JobReport(str(tmp_path / "x"), "failed", "ValueError: boom") for _ in configs]

    monkeypatch.setattr(sweep, "run_all", failing)
    with pytest.raises(SystemExit, match="failed: ValueError: boom"):
        regime.run_rows("world", [1], str(tmp_path / "runs"), [])
