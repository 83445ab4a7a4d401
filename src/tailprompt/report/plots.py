"""Report figures (matplotlib, the `[plot]` extra; Agg canvas, PNG, no pyplot global state).

Four figures per experiment (dataset, protocol, backbone, shots), chosen to stay readable for about
8 methods x 3 tau x 3 seeds:
- reliability diagrams, one panel per (evaluated split, method), at the smallest tau (the most
  imbalanced setting), with the bins of all seeds pooled (the exact diagram of the union of the
  seeds' test predictions);
- the class cosine matrix of the frozen (hand template) text features and of each method's learned
  features, classes ordered by cluster, at the smallest tau and one seed (named in the file name);
- per-class accuracy on the training classes against their training shots, one panel per tau,
  averaged over seeds and over classes with equal shots;
- the seed spread of the headline number (HM for base-to-new) and of tail accuracy: every seed as
  a dot, mean ± std as a bar, one panel per tau.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailprompt.report.aggregate import base_new_hm, group_value, split_value, target_average
from tailprompt.report.results import (
    RUN_DIR_KEY,
    ExperimentKey,
    ReportError,
    deduplicated,
    experiment_layout,
    experiment_slugs,
    group_names,
    grouped_by_experiment,
    method_order,
    tau_key,
)
from tailprompt.utils import atomic_path

if TYPE_CHECKING:  # matplotlib is optional: imported lazily in `_figure`
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
_DPI = 110


def require_matplotlib() -> None:
    """Raise a clear error when the `[plot]` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError(
            "plots need matplotlib: pip install 'tailprompt[plot]' (or pass --no-plots)"
        ) from None


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    # A bare Figure renders through the Agg canvas on savefig without touching pyplot's global backend.
    return Figure(figsize=(width, height), layout="constrained")


def _suptitle(fig: Figure, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width: an unwrapped long title is clipped at both edges."""
    import textwrap

    width_in = fig.get_figwidth()
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))  # ~0.55 em per character of DejaVu Sans
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _save(fig: Figure, path: Path) -> Path:
    import warnings

    with atomic_path(path, "plot") as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp, format="png", dpi=_DPI)
    glyphs = [w for w in caught if "missing from font" in str(w.message)]
    for w in caught:
        if w not in glyphs:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if glyphs:  # one line per plot, not one per character (class names in scripts the font lacks)
        log.warning("%s: %d character(s) of the labels are missing from the plot font and show as boxes",
                    path.name, len(glyphs))
    return path


def _method_colours(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def write_plots(results: Sequence[dict[str, Any]], out_dir: str | Path,
                order: Sequence[str] | None = None) -> list[Path]:
    """Write every report figure for `results` into `out_dir`; returns the PNG paths."""
    require_matplotlib()
    out_dir = Path(out_dir)
    kept, _ = deduplicated(results)
    groups = grouped_by_experiment(kept)
    slugs = experiment_slugs(groups)
    paths: list[Path] = []
    for key, records in groups.items():
        methods = method_order(records, order)
        slug = slugs[key]
        tau_min = min(tau_key(r["tau"]) for r in records)
        at_tau = [r for r in records if tau_key(r["tau"]) == tau_min]
        paths.append(_save(reliability_figure(key, at_tau, methods),
                           out_dir / f"{slug}__reliability_tau{tau_min:g}_pooled-seeds.png"))
        cosine = cosine_figure(key, at_tau, methods, records)
        if cosine is not None:
            fig, seed = cosine
            paths.append(_save(fig, out_dir / f"{slug}__cosine_tau{tau_min:g}_seed{seed}.png"))
        shots = shots_figure(key, records, methods)
        if shots is not None:
            paths.append(_save(shots, out_dir / f"{slug}__accuracy_vs_shots.png"))
        paths.append(_save(seed_spread_figure(key, records, methods), out_dir / f"{slug}__seed_spread.png"))
    return paths


# ------------------------------------------------------------------------------------ reliability


def eval_splits(key: ExperimentKey, records: Sequence[dict[str, Any]]) -> list[str]:
    """Evaluated split names from the records' roles: training split first, then the others and targets."""
    layout = experiment_layout(records)
    return list(layout.splits) + list(layout.targets)


def pooled_reliability(blocks: Sequence[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """Merge per-seed reliability bins: counts add, accuracy / confidence are count-weighted means.

    Returns arrays `bin_edges [B+1]`, `counts [B]`, `accuracy [B]`, `confidence [B]` (fractions in
    [0, 1]; blocks stored in percent are rescaled), or None when no block has bins.
    """
    blocks = [b for b in blocks if isinstance(b, dict) and b.get("counts")]
    if not blocks:
        return None
    edges = np.asarray(blocks[0]["bin_edges"], dtype=float)
    if edges.max() > 1.0 + 1e-6:  # stored in percent
        edges = edges / 100.0
    counts = np.zeros(len(edges) - 1)
    acc_sum, conf_sum = np.zeros_like(counts), np.zeros_like(counts)
    for b in blocks:
        n = np.asarray(b["counts"], dtype=float)
        acc = np.nan_to_num(np.asarray(b["accuracy"], dtype=float))
        conf = np.nan_to_num(np.asarray(b["confidence"], dtype=float))
        if conf.max(initial=0.0) > 1.0 + 1e-6:  # stored in percent
            acc, conf = acc / 100.0, conf / 100.0
        if len(n) != len(counts):
            raise ReportError(f"reliability bins differ between seeds ({len(n)} vs {len(counts)} bins)")
        counts += n
        acc_sum += n * acc
        conf_sum += n * conf
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, conf = acc_sum / counts, conf_sum / counts
    return {"bin_edges": edges, "counts": counts, "accuracy": acc, "confidence": conf}


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    """ECE (x100) of pooled bins: sum_j n_j / N |acc_j - conf_j| (the stored per-run ECE's formula)."""
    n = bins["counts"]
    filled = n > 0
    return float(100.0 * np.sum(n[filled] * np.abs(bins["accuracy"][filled] - bins["confidence"][filled]))
                 / max(n.sum(), 1.0))


def reliability_figure(key: ExperimentKey, records: Sequence[dict[str, Any]], methods: Sequence[str]
                       ) -> Figure:
    """Grid of reliability diagrams: rows = evaluated splits, columns = methods (seeds pooled)."""
    splits = eval_splits(key, records)
    methods = [m for m in methods if any(r["method"] == m for r in records)]
    fig = _figure(1.9 * len(methods) + 0.6, 1.9 * len(splits) + 0.8)
    axes = fig.subplots(len(splits), len(methods), squeeze=False, sharex=True, sharey=True)
    seeds = sorted({r["seed"] for r in records})
    for j, method in enumerate(methods):
        runs = [r for r in records if r["method"] == method]
        for i, split in enumerate(splits):
            ax = axes[i][j]
            bins = pooled_reliability([(r["splits"].get(split) or {}).get("reliability") for r in runs])
            _reliability_panel(ax, bins)
            if i == 0:
                ax.set_title(method, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{split}\naccuracy", fontsize=8)
            if i == len(splits) - 1:
                ax.set_xlabel("confidence", fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:  # the first panel that drew bars has every overlay
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) == 3:
            break
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False)
    tau = tau_key(records[0]["tau"])
    which = f"seeds {_seed_list(seeds)} pooled" if len(seeds) > 1 else f"seed {seeds[0]}"
    _suptitle(fig, f"{key.title()}: reliability at τ={tau:g}, {which}", fontsize=10)
    return fig


def _reliability_panel(ax: Axes, bins: dict[str, np.ndarray] | None) -> None:
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    if bins is None:
        ax.text(0.5, 0.5, "no bins", ha="center", va="center", fontsize=8, color="grey")
        return
    edges, n = bins["bin_edges"], bins["counts"]
    filled = n > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    acc, conf = bins["accuracy"][filled], bins["confidence"][filled]
    ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="white", lw=0.5,
           label="accuracy")
    ax.bar(left, conf - acc, bottom=acc, width=width, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", lw=0.5, label="gap (confidence - accuracy)")
    ax.text(0.04, 0.92, f"ECE {ece_from_bins(bins):.1f}", fontsize=7, va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})


# ---------------------------------------------------------------------------------------- cosine


def load_text_features(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """`learned_text` and `frozen_text` `[K, D]` of a run (L2-normalised rows), or None if not saved."""
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        return None
    from tailprompt.files import FileReadError, read_safetensors

    try:
        tensors, _ = read_safetensors(path, "features file")
    except FileReadError as e:
        raise ReportError(str(e)) from None
    out = {}
    for name in ("learned_text", "frozen_text"):
        if name not in tensors or tensors[name].ndim != 2:
            raise ReportError(f"{path}: expected a 2-D tensor {name!r} [K, D], found {sorted(tensors)}")
        x = tensors[name].double().numpy()
        out[name] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def cluster_order(frozen: np.ndarray, records: Sequence[dict[str, Any]], classnames: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """Class order for cosine matrices: by cluster, then label.

    Uses a run's recorded CPT clusters (`clusters.assignment`, by class name or a list in class
    order) when any run of the experiment has them; otherwise K-means (seed 0, 10 inits) on the
    frozen prototypes with M chosen by best silhouette; classes in label order below 4 classes.

    Returns:
        (order [K] class indices, cluster id per ordered position [K], description for the title).
    """
    k = frozen.shape[0]
    for r in records:
        labels = _recorded_clusters(r.get("clusters"), classnames, k)
        if labels is not None:
            order = np.lexsort((np.arange(k), labels))
            return order, labels[order], f"recorded clusters (M={len(set(labels.tolist()))})"
    if k < 4:
        return np.arange(k), np.zeros(k, dtype=int), "label order"
    labels, m = _kmeans_clusters(frozen)
    order = np.lexsort((np.arange(k), labels))
    return order, labels[order], f"K-means on frozen features (M={m}, best silhouette)"


def _recorded_clusters(clusters: Any, classnames: Sequence[str], k: int) -> np.ndarray | None:
    if not isinstance(clusters, dict):
        return None
    assignment = clusters.get("assignment")
    if isinstance(assignment, list) and len(assignment) == k:
        return np.asarray(assignment, dtype=int)
    if isinstance(assignment, dict) and len(classnames) == k and all(c in assignment for c in classnames):
        return np.asarray([assignment[c] for c in classnames], dtype=int)
    return None


def _kmeans_clusters(x: np.ndarray) -> tuple[np.ndarray, int]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best: tuple[float, np.ndarray, int] | None = None
    for m in range(2, min(x.shape[0] // 2, 12) + 1):
        labels = KMeans(n_clusters=m, n_init=10, random_state=0).fit_predict(x)
        if len(set(labels.tolist())) < 2:
            continue
        score = silhouette_score(x, labels, metric="cosine")
        if best is None or score > best[0]:
            best = (score, labels, m)
    if best is None:
        return np.zeros(x.shape[0], dtype=int), 1
    return best[1], best[2]


def cosine_figure(key: ExperimentKey, records: Sequence[dict[str, Any]], methods: Sequence[str],
                  all_records: Sequence[dict[str, Any]]) -> tuple[Figure, int] | None:
    """Cosine matrices of frozen and learned class text features, ordered by cluster.

    One representative run per method: the smallest seed holding `features.safetensors` (the
    common seed is named in the title and file name; a method whose run at that seed is missing
    says its seed in its panel title). Returns (figure, seed) or None when no run saved features.
    """
    reps: list[tuple[str, dict[str, Any], dict[str, np.ndarray]]] = []
    for method in methods:
        for r in sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"]):
            feats = load_text_features(r[RUN_DIR_KEY]) if r.get(RUN_DIR_KEY) else None
            if feats is not None:
                reps.append((method, r, feats))
                break
    if not reps:
        return None
    seed = min(r["seed"] for _, r, _ in reps)
    frozen = reps[0][2]["frozen_text"]
    classnames = _train_classnames(key, reps[0][1], frozen.shape[0])
    order, ordered_clusters, how = cluster_order(frozen, all_records, classnames)
    panels = [("frozen (hand template)", frozen)]
    for method, r, feats in reps:
        if feats["learned_text"].shape[0] != frozen.shape[0]:
            raise ReportError(f"{r[RUN_DIR_KEY]}/{FEATURES_FILE}: learned_text has "
                              f"{feats['learned_text'].shape[0]} classes, frozen_text {frozen.shape[0]}")
        title = method if r["seed"] == seed else f"{method} (seed {r['seed']})"
        panels.append((title, feats["learned_text"]))
    mats = [(title, (x @ x.T)[np.ix_(order, order)]) for title, x in panels]
    k = frozen.shape[0]
    off = ~np.eye(k, dtype=bool)
    vmin = min(float(m[off].min()) for _, m in mats) if k > 1 else -1.0
    vmax = max(float(m[off].max()) for _, m in mats) if k > 1 else 1.0
    ncols = min(len(mats), 5)
    nrows = -(-len(mats) // ncols)
    fig = _figure(2.6 * ncols + 0.8, 2.75 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    same = ordered_clusters[:, None] == ordered_clusters[None, :]
    for idx, ax in enumerate(axes.flat):
        if idx >= len(mats):
            ax.set_axis_off()
            continue
        title, mat = mats[idx]
        image = ax.imshow(mat, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        for b in np.flatnonzero(np.diff(ordered_clusters)) + 0.5:
            ax.axhline(b, color="white", lw=0.6)
            ax.axvline(b, color="white", lw=0.6)
        intra = mat[same & off].mean() if (same & off).any() else float("nan")
        inter = mat[~same].mean() if (~same).any() else float("nan")
        ax.set_title(f"{title}\nintra {intra:.2f} · inter {inter:.2f}", fontsize=8)
        if k <= 24:
            names = [classnames[i] for i in order]
            ax.set_xticks(range(k), names, rotation=90, fontsize=5)
            ax.set_yticks(range(k), names, fontsize=5)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine")
    tau = tau_key(records[0]["tau"])
    split = experiment_layout(all_records).training or "training"
    _suptitle(fig, f"{key.title()}: cosine of {split} class text features, τ={tau:g}, seed {seed}; "
                 f"ordered by {how}", fontsize=10)
    return fig, seed


def _train_classnames(key: ExperimentKey, record: dict[str, Any], k: int) -> list[str]:
    split = record["splits"].get(experiment_layout([record]).training or "", {}) or {}
    names = split.get("classnames") or list((record.get("sampling") or {}).get("counts") or {})
    return [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]


# ----------------------------------------------------------------------------------------- shots


def shot_accuracy(records: Sequence[dict[str, Any]], split: str) -> dict[int, float]:
    """Mean per-class accuracy of `split` by training shot count, over seeds and classes with that count."""
    by_shots: dict[int, list[float]] = {}
    for r in records:
        counts = (r.get("sampling") or {}).get("counts") or {}
        per_class = (r["splits"].get(split) or {}).get("per_class_accuracy") or {}
        for name, acc in per_class.items():
            if name in counts and isinstance(acc, (int, float)):
                by_shots.setdefault(int(counts[name]), []).append(float(acc))
    return {s: float(np.mean(v)) for s, v in sorted(by_shots.items())}


def shots_figure(key: ExperimentKey, records: Sequence[dict[str, Any]], methods: Sequence[str]
                 ) -> Figure | None:
    """Per-class accuracy against training shots, one panel per tau, one line per method."""
    split = experiment_layout(records).training
    if split is None:
        return None
    taus = sorted({tau_key(r["tau"]) for r in records}, reverse=True)
    curves = {(m, t): shot_accuracy([r for r in records if r["method"] == m and tau_key(r["tau"]) == t],
                                    split)
              for m in methods for t in taus}
    if not any(curves.values()):
        return None
    colours = _method_colours(methods)
    fig = _figure(3.2 * len(taus) + 1.8, 3.2)
    axes = fig.subplots(1, len(taus), squeeze=False, sharey=True)[0]
    markers = "osD^v<>Xph*"
    for ax, tau in zip(axes, taus):
        for i, method in enumerate(methods):
            curve = curves[(method, tau)]
            if curve:
                ax.plot(list(curve), list(curve.values()), marker=markers[i % len(markers)], ms=3.5, lw=1.0,
                        color=colours[method], label=method)
        ax.set_xscale("log")
        # Tick the shot counts that occur, as plain integers (log-scale defaults print 4x10^0).
        shots = sorted({s for m in methods for s in curves[(m, tau)]})
        ticks = shots if len(shots) <= 8 else sorted(set(shots[:: max(1, len(shots) // 6)] + shots[-1:]))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        if len(shots) == 1:
            ax.set_xlim(shots[0] / 1.5, shots[0] * 1.5)
        ax.set_title(f"τ={tau:g}", fontsize=9)
        ax.set_xlabel("training shots of the class", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy on {split} class (%)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    _suptitle(fig, f"{key.title()}: per-class accuracy vs training shots "
                 f"(mean over seeds and classes with equal shots)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------- seed spread


def headline_metric(key: ExperimentKey, records: Sequence[dict[str, Any]]) -> tuple[str, Any]:
    """(label, metric) of the protocol's summary number, from the split roles: the harmonic mean, the
    target average (or the one target), else accuracy on the training split."""
    layout = experiment_layout(records)
    if layout.harmonic:
        return "HM (%)", base_new_hm
    targets = list(layout.targets)
    if not targets:
        return "accuracy (%)", split_value(layout.training or "", "accuracy")
    if len(targets) == 1:
        return f"accuracy on {targets[0]} (%)", split_value(targets[0], "accuracy")
    return "average target accuracy (%)", target_average(targets)


def seed_spread_figure(key: ExperimentKey, records: Sequence[dict[str, Any]], methods: Sequence[str]
                       ) -> Figure:
    """Every seed's headline number (and tail accuracy when recorded) per method, one panel per tau."""
    taus = sorted({tau_key(r["tau"]) for r in records}, reverse=True)
    metrics = [headline_metric(key, records)]
    last = group_names(records)[-1]  # tail / few
    if any(group_value(last)(r) is not None for r in records):
        metrics.append((f"{last} accuracy (%)", group_value(last)))
    colours = _method_colours(methods)
    fig = _figure(max(3.0, 0.42 * len(methods) + 1.0) * len(taus), 2.8 * len(metrics) + 0.9)
    axes = fig.subplots(len(metrics), len(taus), squeeze=False, sharey="row")
    for i, (label, metric) in enumerate(metrics):
        for j, tau in enumerate(taus):
            ax = axes[i][j]
            for x, method in enumerate(methods):
                runs = [r for r in records if r["method"] == method and tau_key(r["tau"]) == tau]
                values = np.asarray([v for r in runs if (v := metric(r)) is not None], dtype=float)
                if values.size == 0:
                    continue
                jitter = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
                ax.scatter(x + jitter, values, s=14, color=colours[method], zorder=3)
                ax.errorbar(x + 0.3, values.mean(), yerr=values.std(), fmt="_", ms=10, color="black",
                            capsize=2, lw=0.8, zorder=2)
            ax.set_xticks(range(len(methods)), methods if i == len(metrics) - 1 else [""] * len(methods),
                          rotation=45, ha="right", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
            if i == 0:
                ax.set_title(f"τ={tau:g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    _suptitle(fig, f"{key.title()}: seed spread (dots = seeds, bar = mean ± std)", fontsize=10)
    return fig


def _seed_list(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)
