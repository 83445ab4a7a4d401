"""Synthetic run folders (result.json + features.safetensors) for the report tests (helpers; the
fixtures in conftest.py use them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

BASE = ["red circle", "blue square", "green star", "red square", "blue circle", "green circle"]
NEW = ["red star", "blue star", "green square", "yellow circle", "yellow square"]
METHODS = ["coop", "cpt_coop"]
TAUS = [1.0, 0.06]
SEEDS = [1, 2, 3]


def longtail_counts(k: int, shots: int, tau: float) -> list[int]:
    return [max(1, math.floor(shots * tau ** (i / (k - 1)))) for i in range(k)]


def accuracies(method: str, tau: float, seed: int) -> tuple[float, float]:
    """Distinct, seed-dependent base / new accuracies so that HM-of-means != mean-of-HMs."""
    m = METHODS.index(method) if method in METHODS else 0
    base = 60.0 + 8.0 * m + 5.0 * tau + [0.0, 9.0, -4.0][seed - 1]
    new = 50.0 - 3.0 * m - 2.0 * tau + [12.0, -10.0, 1.5][seed - 1]
    return base, new


def reliability(seed: int, scale: float = 1.0) -> dict[str, Any]:
    counts = [0, 0, 0, 2, 5, 10, 20, 30, 40, 50 + seed]
    conf = [0.0, 0.0, 0.0, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    acc = [0.0, 0.0, 0.0, 0.3, 0.4, 0.5, 0.62, 0.7, 0.8, 0.9 + 0.01 * seed]
    return {"bin_edges": [i / 10 * scale for i in range(11)], "counts": counts,
            "accuracy": [a * scale for a in acc], "confidence": [c * scale for c in conf]}


def split_block(names: list[str], acc: float, ece: float, seed: int) -> dict[str, Any]:
    per_class = {n: max(0.0, min(100.0, acc + 3.0 * (len(names) / 2 - i))) for i, n in enumerate(names)}
    return {"classnames": names, "accuracy": acc, "per_class_accuracy": per_class, "ece": ece, "mce": ece * 2,
            "aece": ece * 0.9, "nll": 1.0 + ece / 100, "reliability": reliability(seed),
            "ece_temperature_scaled": None, "temperature": None, "ece_dac": None}


def make_result(method: str, tau: float, seed: int, dataset: str = "world_colour_shape",
                protocol: str = "base_to_new", **extra: Any) -> dict[str, Any]:
    counts = dict(zip(BASE, longtail_counts(len(BASE), 16, tau)))
    base, new = accuracies(method, tau, seed)
    clusters = None
    if method.startswith("cpt"):
        colour_ids = {n: ["red", "blue", "green"].index(n.split()[0]) for n in BASE}
        clusters = {"n_clusters": 3, "assignment": colour_ids, "sizes": [2, 2, 2], "criterion": "silhouette"}
    record = {
        "run_id": f"{method}-{tau:g}-{seed}-{dataset}-{protocol}", "method": method, "seed": seed,
        "dataset": dataset, "protocol": protocol, "tau": tau, "shots": 16, "learner": "coop",
        "backbone": {"name": "embedded", "identity": "random:0"},
        "config": {"protocol": {"name": protocol, "targets": []}},
        "versions": {"tailprompt": "0.1.0"},
        "sampling": {"counts": counts, "ids": {n: [f"{n}/{i}" for i in range(c)] for n, c in counts.items()}},
        "splits": {"base": split_block(BASE, base, 3.0 + seed + tau, seed),
                   "new": split_block(NEW, new, 6.0 + 2 * seed - tau, seed)},
        "hm": 2 * base * new / (base + new),
        "groups": {"head": base + 6.0 - seed, "medium": base, "tail": base - 6.0 * (1.0 - tau) - seed,
                   "classes": {"head": BASE[:2], "medium": BASE[2:4], "tail": BASE[4:]}},
        "geometry": {"learned": {"delta_lcd": 0.1 * seed, "effective_rank": 4.0 + seed},
                     "frozen": {"delta_lcd": 0.3}, "image": {"modality_gap": 0.8}},
        "clusters": clusters,
        "loss_curve": {"total": [2.0, 1.5, 1.0 + 0.1 * seed]},
        "timings": {"features_s": 0.1, "train_s": 1.0 * seed, "eval_s": 0.2, "total_s": 1.3},
    }
    record.update(extra)
    return record


def write_run(runs_dir: Path, record: dict[str, Any], features: bool = True) -> Path:
    run_dir = runs_dir / record["run_id"]
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(record), encoding="utf-8")
    if features:
        g = torch.Generator().manual_seed(record["seed"])
        frozen = torch.randn(len(BASE), 16, generator=g)
        learned = frozen + 0.3 * torch.randn(len(BASE), 16, generator=g)
        save_file({"learned_text": learned, "frozen_text": frozen}, str(run_dir / "features.safetensors"))
    return run_dir
