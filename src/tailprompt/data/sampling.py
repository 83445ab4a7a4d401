"""Few-shot, long-tail and base/new sampling of a `DatasetSplits`, auditable and seed-determined.

Conventions (design.md §4 and §8, peers.md §3.2-3.3 and §5, calibration_and_longtail.md §2.5):
* few-shot: per class, a uniform random subset of at most `shots` training images and at most
  `min(shots, 4)` validation images (CoOp's readers). The draw for a class comes from a generator
  derived from (run seed, split, class name) only, so it ignores global RNG state and does not change
  when other classes are added or removed (the same subset in `all` and in `base`). It is *not*
  Dassl's image ids (those come from Python's global `random`); `fewshot_ids` reuses exact subsets;
* long tail: class k of the training label set (label order) keeps `counts[k]` images, drawn as the
  prefix of its balanced `shots`-subset, so tau = 1 is the standard protocol and smaller tau nest;
* base/new: sorted labels, the first ceil(K/2) are base, relabelled from 0 (`subsample_classes`);
  in base-to-new the decay runs over the base classes after the split (as Candle does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tailprompt.data.seeding import derived_rng
from tailprompt.data.types import DatasetSplits, Item

log = logging.getLogger(__name__)

PROFILES = ("exp", "step", "counts")
VAL_SHOTS_MAX = 4  # CoOp readers: val gets min(num_shots, 4) per class


@dataclass
class TrainingSet:
    """The sampled training data of one run.

    `items`/`val_items` are grouped by class in label order; `counts` and `ids` are keyed by class
    (see `class_keys`) in label order and record exactly which images were used (`ids`: `Item.key`s).
    """

    items: list[Item]
    val_items: list[Item]
    counts: dict[str, int]
    ids: dict[str, list[str]]


def class_keys(classnames: Sequence[str]) -> list[str]:
    """The keys used for classes in counts/ids files: the class names, made unique.

    A repeated name gets `#2`, `#3`, ... on its later occurrences (a user's `classnames.txt` may
    repeat a name, e.g. the two ImageNet wnids labelled "crane").
    """
    seen: dict[str, int] = {}
    keys = []
    for name in classnames:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def select_classes(ds: DatasetSplits, which: str) -> DatasetSplits:
    """Keep the `base` (first ceil(K/2) sorted labels), `new` (the rest) or `all` classes, relabelled from 0.

    Same split as the reference's `subsample_classes`, which takes the labels of the train split;
    here they are all labels of the dataset (identical whenever every class has training images).
    """
    if which == "all":
        return ds
    if which not in ("base", "new"):
        raise ValueError(f"classes: expected base, new or all, got {which!r}")
    m = math.ceil(ds.num_classes / 2)
    selected = list(range(m)) if which == "base" else list(range(m, ds.num_classes))
    relabel = {old: new for new, old in enumerate(selected)}

    def keep(items: list[Item]) -> list[Item]:
        return [replace(it, label=relabel[it.label]) for it in items if it.label in relabel]

    return replace(
        ds,
        classnames=[ds.classnames[k] for k in selected],
        train=keep(ds.train),
        val=keep(ds.val),
        test=keep(ds.test),
    )


def longtail_counts(
    num_classes: int,
    shots: int,
    tau: float,
    profile: str = "exp",
    counts: Mapping[str, int] | None = None,
    classnames: Sequence[str] | None = None,
    where: str = "counts",
) -> list[int]:
    """Training images wanted per class k = 0..K-1 (label order of the training label set); `where` (the counts
    file) prefixes the errors about `counts`.

    * `exp`: `max(1, floor(shots * tau ** (k / (K - 1))))` (LDAM-DRW's `exp` with a >= 1 clamp;
      shots=16, tau=0.06, K=5 -> [16, 7, 3, 1, 1]);
    * `step`: the first ceil(K/2) classes keep `shots`, the rest `max(1, floor(shots * tau))`
      (LDAM-DRW's `step`, with the odd class going to the tail);
    * `counts`: `counts[class key]` per class (`classnames` required; keys as `class_keys`), each in
      1..shots; keys of classes not in the label set are ignored, so one file serves base and new.

    A 1e-9 slack before `floor` keeps exact products (16 * 0.25 ** 0.5 = 8) from rounding down.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if profile == "exp":
        if num_classes == 1:
            return [shots]
        return [max(1, math.floor(shots * tau ** (k / (num_classes - 1)) + 1e-9)) for k in range(num_classes)]
    if profile == "step":
        head = math.ceil(num_classes / 2)
        tail = max(1, math.floor(shots * tau + 1e-9))
        return [shots if k < head else tail for k in range(num_classes)]
    if profile == "counts":
        return _counts_from_mapping(num_classes, shots, counts, classnames, where)
    raise ValueError(f"profile: expected one of {', '.join(PROFILES)}, got {profile!r}")


def _counts_from_mapping(
    num_classes: int, shots: int, counts: Mapping[str, int] | None, classnames: Sequence[str] | None,
    where: str = "counts",
) -> list[int]:
    if counts is None or classnames is None:
        raise ValueError("profile 'counts' needs a counts file {class name: n} (data.counts_file, or --counts of "
                         "`tailprompt data sample`)")
    keys = class_keys(classnames)
    if len(keys) != num_classes:
        raise ValueError(f"{where}: {len(keys)} class names for {num_classes} classes")
    for key in keys:
        n = counts.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= shots):
            raise ValueError(f"{where}[{key!r}]: expected an integer in 1..{shots} (shots), got {n!r}")
    missing = [k for k in keys if k not in counts]
    if missing:
        raise ValueError(f"{where}: no count for class(es) {missing[:5]}")
    return [counts[key] for key in keys]


def read_counts_file(path: str | Path) -> dict[str, int]:
    """A `{class name: n}` JSON file (or a `data sample --json` record, whose `counts` are used)."""
    data = _read_json(path, "counts file")
    if isinstance(data, dict) and isinstance(data.get("counts"), dict):
        data = data["counts"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{class name: count}}")
    return data


def read_fewshot_ids(source: Mapping[str, Any] | str | Path) -> dict[str, list[str]]:
    """The `ids` of a run's `result.json` (`sampling.ids`), of a `data sample --json` record (path or parsed
    object), or a bare `{class: [key]}`."""
    where = str(source) if isinstance(source, (str, Path)) else "fewshot_ids"
    data = _read_json(source, "fewshot ids file") if isinstance(source, (str, Path)) else source
    if isinstance(data, Mapping) and isinstance(data.get("sampling"), Mapping):
        data = data["sampling"]
    if isinstance(data, Mapping) and isinstance(data.get("ids"), Mapping):
        data = data["ids"]
    if not isinstance(data, Mapping) or not all(
        isinstance(v, list) and all(isinstance(k, str) for k in v) for v in data.values()
    ):
        raise ValueError(f'{where}: expected a run\'s result.json or {{"ids": {{class name: [image key, ...]}}}}')
    return {str(k): list(v) for k, v in data.items()}


def _read_json(path: str | Path, what: str) -> Any:
    from tailprompt.files import read_json  # errors name the file (a FileReadError is a ValueError)

    return read_json(path, what)


def _by_class(items: Sequence[Item], num_classes: int) -> list[list[Item]]:
    """Items per label, each sorted by key so the draw ignores listing order."""
    groups: list[list[Item]] = [[] for _ in range(num_classes)]
    for it in items:
        groups[it.label].append(it)
    return [sorted(g, key=lambda it: it.key) for g in groups]


def _draw(pool: list[Item], n: int, seed: int, stream: str, key: str) -> list[Item]:
    """The first n of a seed-determined permutation of `pool` (so smaller n give prefixes)."""
    order = derived_rng("fewshot", seed, stream, key).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def sample_training_set(
    ds: DatasetSplits,
    shots: int,
    tau: float,
    seed: int,
    profile: str = "exp",
    counts: Mapping[str, int] | str | Path | None = None,
    fewshot_ids: Mapping[str, Any] | str | Path | None = None,
) -> TrainingSet:
    """Sample the long-tailed few-shot training set (and the few-shot val set) of one run.

    Args:
        ds: the dataset in the training label space (after `select_classes`).
        shots: maximum training images per class (the balanced subset size).
        tau: imbalance ratio min/max for `exp`/`step`.
        seed: the run seed; the only source of randomness.
        profile: `exp`, `step` or `counts` (see `longtail_counts`).
        counts: `{class key: n}` (or a JSON file) for `profile="counts"`.
        fewshot_ids: a previous record's ids (path or object): the training set is exactly those
            images (shots/tau/profile are then not used); val is still drawn from the seed.
    """
    if not ds.train:
        raise ValueError(f"dataset {ds.name!r} has no training split (test-only datasets cannot be sampled)")
    keys = class_keys(ds.classnames)
    pools = _by_class(ds.train, ds.num_classes)
    if fewshot_ids is not None:
        where = str(fewshot_ids) if isinstance(fewshot_ids, (str, Path)) else "fewshot_ids"
        chosen = _reuse_ids(ds, keys, pools, read_fewshot_ids(fewshot_ids), where)
    else:
        where = str(counts) if isinstance(counts, (str, Path)) else "counts"
        if isinstance(counts, (str, Path)):
            counts = read_counts_file(counts)
        wanted = longtail_counts(ds.num_classes, shots, tau, profile, counts, ds.classnames, where=where)
        chosen = [_draw(pool, shots, seed, "train", key)[:n] for pool, key, n in zip(pools, keys, wanted)]
    empty = [k for k, c in zip(keys, chosen) if not c]
    if empty:
        log.warning("%s: no training images for class(es) %s", ds.name, empty[:5])
    val_pools = _by_class(ds.val, ds.num_classes)
    val_shots = min(shots, VAL_SHOTS_MAX)
    val = [_draw(pool, val_shots, seed, "val", key) for pool, key in zip(val_pools, keys)]
    return TrainingSet(
        items=[it for c in chosen for it in c],
        val_items=[it for c in val for it in c],
        counts={k: len(c) for k, c in zip(keys, chosen)},
        ids={k: [it.key for it in c] for k, c in zip(keys, chosen)},
    )


def _reuse_ids(
    ds: DatasetSplits, keys: list[str], pools: list[list[Item]], ids: Mapping[str, list[str]],
    where: str = "fewshot_ids",
) -> list[list[Item]]:
    missing = [k for k in keys if k not in ids]
    if missing:
        raise ValueError(f"{where}: no ids for class(es) {missing[:5]} of dataset {ds.name!r}")
    chosen = []
    for key, pool in zip(keys, pools):
        by_key = {it.key: it for it in pool}
        unknown = [i for i in ids[key] if i not in by_key]
        if unknown:
            raise ValueError(
                f"{where}: {unknown[:3]} are not training images of class {key!r} in {ds.name!r}"
            )
        chosen.append([by_key[i] for i in ids[key]])
    return chosen


def sampling_record(ds: DatasetSplits, seed: int, ts: TrainingSet) -> dict[str, Any]:
    """The auditable record of a sample: `{"dataset", "seed", "counts", "ids"}`, classes in label order."""
    return {
        "dataset": ds.name,
        "seed": seed,
        "counts": dict(ts.counts),
        "ids": {k: list(v) for k, v in ts.ids.items()},
    }
