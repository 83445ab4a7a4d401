"""Reading stored run records (`RUNS_DIR/*/result.json`) and grouping them into experiments.

A report never trusts a result blindly: a folder without `result.json` is an unfinished run and is
skipped (the sweep redoes it), while a `result.json` that is not valid JSON or lacks a field the
tables need is an error naming the file, because silently dropping it would bias a mean over seeds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailprompt.errors import UserError
from tailprompt.files import short_repr
from tailprompt.records import RunRecord

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
# Key under which `load_results` records the run folder of each record (not part of the stored schema).
RUN_DIR_KEY = "_run_dir"
# Marks the copies `spread_sampling_independent` makes (so spreading twice changes nothing).
SPREAD_KEY = "_spread"
# Records written before result.json carried `split_roles` / `protocol_label`: the roles and labels the
# shipped protocols declare (protocols.py), keyed by split and protocol name. Newer records
# carry their own, so a new protocol needs no entry here.
LEGACY_SPLIT_ROLES: dict[str, dict[str, Any]] = {
    "base": {"label": "Base", "training": True, "harmonic_mean": True},
    "new": {"label": "New", "harmonic_mean": True},
    "all": {"label": "All", "training": True},
    "source": {"label": "Source", "training": True},
}
LEGACY_PROTOCOL_LABELS = {"base_to_new": "base-to-new", "cross_dataset": "cross-dataset",
                          "domain_generalization": "domain generalization", "all_classes": "all classes"}
_REQUIRED = RunRecord.report_field_types()  # the writer's own definition of these fields
# The other fields: checked when present, as the tables and plots read them (null stands for absent).
_OPTIONAL = {k: (*types, type(None)) if type(None) not in types else types
             for k, types in RunRecord.optional_field_types().items()}
_LEGACY_TYPES: dict[str, tuple[type, ...]] = {"backbone": (str,)}  # older records name the backbone bare
# Per-split blocks the plots read (result.json `splits.<name>`), when present.
_SPLIT_FIELDS: dict[str, tuple[type, ...]] = {"classnames": (list,), "per_class_accuracy": (dict,),
                                              "reliability": (dict,)}
# Per-split numbers the tables average, each x100 (null where a metric does not apply).
_PERCENTAGES = ("accuracy", "ece", "mce", "aece", "ece_temperature_scaled", "ece_dac")


class ReportError(UserError, ValueError):
    """A runs folder or result record the report cannot use; the message names the file and field (a
    `UserError`)."""


def load_results(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every run record in a `result.json` at any depth under `runs_dir`, in path order.

    Folders without `result.json` (unfinished runs, the report's own output) are skipped; a run folder
    is not searched further (its files are the run's). Each returned dict is the stored record plus
    `"_run_dir"`: the run folder as a string, so plots can find `features.safetensors` next to it.

    Raises:
        ReportError: `runs_dir` is not a folder, a `result.json` is not valid JSON, or a record
            lacks a field the report needs (the message names the file and the field).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir}: not a folder (expected a runs folder holding <run_id>/result.json)")
    results = []
    for path in result_files(runs_dir):
        record = _read_record(path)
        record[RUN_DIR_KEY] = str(path.parent)
        results.append(record)
    return results


def result_files(root: Path) -> list[Path]:
    """`result.json` files at any depth under `root` (sweeps nest runs per method or dataset), sorted."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        if RESULT_FILE in files and Path(folder) != root:
            found.append(Path(folder) / RESULT_FILE)
            dirs.clear()  # a run folder's subfolders are its own artefacts, not runs
        dirs.sort()
    return sorted(found)


def _read_record(path: Path) -> dict[str, Any]:
    from tailprompt.files import FileReadError, read_json_object

    try:
        record = read_json_object(path, "result file")
    except FileReadError as e:
        raise ReportError(str(e)) from None
    validate_record(record, str(path))
    return record


def validate_record(record: dict[str, Any], where: str) -> None:
    """Check the fields the tables read; `where` (a file name) prefixes every error message."""
    for key, types in _REQUIRED.items():
        if key not in record:
            raise ReportError(f"{where}: missing field {key!r} (see the result.json schema)")
        value = record[key]
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            raise ReportError(f"{where}: field {key!r} should be {expected}, got {value!r}")
    if not 0.0 < float(record["tau"]) <= 1.0:  # NaN fails too
        raise ReportError(f"{where}: field 'tau' should be an imbalance ratio in (0, 1], got {record['tau']!r}")
    if not record["splits"]:
        raise ReportError(f"{where}: field 'splits' is empty (a run evaluates at least one split)")
    for key, types in _OPTIONAL.items():
        if key in record and not _fits(record[key], types + _LEGACY_TYPES.get(key, ())):
            raise ReportError(f"{where}: field {key!r} should be {_type_names(types)}, got {short_repr(record[key])}")
    for name, split in record["splits"].items():
        if not isinstance(split, dict) or not _fits(split.get("accuracy"), (int, float)):
            raise ReportError(f"{where}: splits.{name}.accuracy should be a number")
        for key in _PERCENTAGES:  # a NaN or out-of-range value would shift a mean over seeds unseen
            value = split.get(key)
            if value is not None and not (_fits(value, (int, float)) and 0.0 <= value <= 100.0):
                raise ReportError(f"{where}: splits.{name}.{key} should be a percentage in [0, 100], got "
                                  f"{short_repr(value)}")
        for key, types in _SPLIT_FIELDS.items():
            if split.get(key) is not None and not _fits(split[key], types):
                raise ReportError(f"{where}: splits.{name}.{key} should be {_type_names(types)}, got "
                                  f"{short_repr(split[key])}")
    roles = record.get("split_roles")
    missing = [n for n in roles if n not in record["splits"]] if isinstance(roles, dict) else []
    if missing:
        raise ReportError(f"{where}: splits.{missing[0]} is missing, though split_roles names it")
    paired = [n for n, role in split_roles(record).items() if role.harmonic_mean]
    if len(paired) == 1:  # its partner (base-to-new's new split) is gone: the run would drop out of HM cells
        raise ReportError(f"{where}: split {paired[0]!r} has the harmonic-mean role, but no second split has it "
                          f"(missing from 'splits', or given another role in 'split_roles')")
    counts = (record.get("sampling") or {}).get("counts")
    if counts is not None and not isinstance(counts, dict):
        raise ReportError(f"{where}: sampling.counts should be dict, got {short_repr(counts)}")


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    """`isinstance` with JSON's booleans kept apart from its numbers."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


@dataclass(frozen=True, order=True)
class ExperimentKey:
    """What one table compares methods on: everything but the method, tau and seed."""

    dataset: str
    protocol: str
    backbone: str
    shots: int
    label: str = field(default="", compare=False)  # the protocol in words (result.json's protocol_label)
    full_data: bool = field(default=False, compare=False)  # the shot cap exceeds every class (no few-shot)

    def title(self, with_setting: bool = True) -> str:
        protocol = self.label or LEGACY_PROTOCOL_LABELS.get(self.protocol, self.protocol)
        shots = "full data" if self.full_data else f"{self.shots}-shot"
        setting = f" ({self.backbone}, {shots})" if with_setting else ""
        return f"{self.dataset} · {protocol}{setting}"


def backbone_name(record: dict[str, Any]) -> str:
    """The backbone a run record names (result.json's `backbone.name`; older records hold a bare string)."""
    backbone = record.get("backbone") or {}
    return str(backbone.get("name", "?") if isinstance(backbone, dict) else backbone)


def experiment_key(record: dict[str, Any]) -> ExperimentKey:
    shots = int(record.get("shots") or 0)
    counts = [c for c in ((record.get("sampling") or {}).get("counts") or {}).values() if isinstance(c, int)]
    label = record.get("protocol_label")
    return ExperimentKey(record["dataset"], record["protocol"], backbone_name(record), shots,
                         label=label if isinstance(label, str) else "",
                         full_data=bool(counts) and max(counts) < shots)


@dataclass(frozen=True)
class SplitRole:
    """A split's role as the protocol declared it (result.json `split_roles`)."""

    label: str
    training: bool = False
    harmonic_mean: bool = False
    target: bool = False


def split_roles(record: dict[str, Any]) -> dict[str, SplitRole]:
    """`{split: role}` of a record, in its splits' order: the stored roles, else the legacy defaults
    (an unknown split of an old record is a transfer target named after itself)."""
    stored = record.get("split_roles")
    stored = stored if isinstance(stored, dict) else {}
    roles = {}
    for name in record["splits"]:
        entry = stored.get(name) if isinstance(stored.get(name), dict) else None
        if entry is None:
            entry = LEGACY_SPLIT_ROLES.get(name, {"label": name, "target": True})
        roles[name] = SplitRole(str(entry.get("label", name)), bool(entry.get("training", False)),
                                bool(entry.get("harmonic_mean", False)), bool(entry.get("target", False)))
    return roles


@dataclass(frozen=True)
class Layout:
    """How an experiment's splits are tabulated, from the roles its records declare."""

    splits: tuple[str, ...]  # the splits that are not transfer targets, training split first
    labels: dict[str, str]  # split -> column label
    training: str | None  # the training label space's split
    harmonic: tuple[str, str] | None  # the two splits of the harmonic mean, in protocol order
    targets: tuple[str, ...]  # transfer targets, in the config's order where recorded


def experiment_layout(records: Sequence[dict[str, Any]]) -> Layout:
    """The union of the records' split roles (records of one experiment declare the same ones)."""
    roles: dict[str, SplitRole] = {}
    for r in records:
        for name, role in split_roles(r).items():
            roles.setdefault(name, role)
    fixed = [n for n, role in roles.items() if not role.target]
    fixed.sort(key=lambda n: not roles[n].training)  # stable: protocol order otherwise
    harmonic = [n for n in fixed if roles[n].harmonic_mean]
    training = next((n for n in fixed if roles[n].training), None)
    return Layout(tuple(fixed), {n: role.label for n, role in roles.items()}, training,
                  (harmonic[0], harmonic[1]) if len(harmonic) == 2 else None,
                  tuple(n for n in target_splits(records) if roles.get(n, SplitRole(n)).target))


def group_names(records: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The class-group names the records use: many/medium/few (shot thresholds) or head/medium/tail."""
    for r in records:
        groups = r.get("groups")
        if isinstance(groups, dict) and "many" in groups:
            return ("many", "medium", "few")
    return ("head", "medium", "tail")


def tau_key(tau: float) -> float:
    """Tau as a dict key: JSON round trips keep floats exact, rounding guards hand-written files."""
    return round(float(tau), 6)


def method_order(results: Iterable[dict[str, Any]], preferred: Sequence[str] | None = None) -> list[str]:
    """Table row order: `preferred` first (as given), then as the papers' tables: zero-shot, plain
    learners (method named after its learner, e.g. coop, kgcoop), then methods adding objectives,
    each block alphabetically."""
    rank: dict[str, int] = {}
    for r in results:
        method, learner = r["method"], r.get("learner")
        tier = 0 if learner == "zeroshot" else 1 if method == learner else 2
        rank[method] = min(rank.get(method, tier), tier)
    head = [m for m in (preferred or []) if m in rank]
    rest = sorted((m for m in rank if m not in head), key=lambda m: (rank[m], m))
    return head + rest


def spread_sampling_independent(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run that trained nothing (`sampling_independent`: zero-shot) ran once for a whole sweep; it stands
    for every (tau, seed) of its experiment, so it gets a copy per pair (the tables show it in every tau
    column, as if each had been run)."""
    pairs: dict[ExperimentKey, set[tuple[float, int]]] = {}
    taus: dict[ExperimentKey, set[float]] = {}
    seeds: dict[ExperimentKey, set[int]] = {}
    for r in results:
        key = experiment_key(r)
        taus.setdefault(key, set()).add(tau_key(r["tau"]))
        seeds.setdefault(key, set()).add(r["seed"])
    for key in taus:
        pairs[key] = {(t, s) for t in taus[key] for s in seeds[key]}
    out: list[dict[str, Any]] = []
    for r in results:
        if r.get("sampling_independent") is True and not r.get(SPREAD_KEY):
            out += [{**r, "tau": t, "seed": s, SPREAD_KEY: True} for t, s in sorted(pairs[experiment_key(r)])]
        else:
            out.append(r)
    return out


def deduplicated(results: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep one record per (experiment, method, tau, seed): the newest `result.json`.

    Two records for the same cell come from re-running with a changed config (a new run_id);
    averaging both would count that seed twice. Runs that trained nothing first stand for every
    (tau, seed) of their experiment (`spread_sampling_independent`). Returns (kept records, dropped
    run ids).
    """
    results = spread_sampling_independent(results)
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}
    dropped: list[str] = []
    for r in results:
        key = (experiment_key(r), r["method"], tau_key(r["tau"]), r["seed"])
        old = newest.get(key)
        if old is None or _mtime(r) >= _mtime(old):
            if old is not None:
                dropped.append(str(old.get("run_id", old.get(RUN_DIR_KEY, "?"))))
            newest[key] = r
        else:
            dropped.append(str(r.get("run_id", r.get(RUN_DIR_KEY, "?"))))
    if dropped:
        log.warning("%d duplicate run(s) for the same method/tau/seed ignored (older): %s",
                    len(dropped), ", ".join(dropped))
    kept_ids = {id(v) for v in newest.values()}
    kept = [r for r in results if id(r) in kept_ids]
    return kept, dropped


def _mtime(record: dict[str, Any]) -> float:
    run_dir = record.get(RUN_DIR_KEY)
    if not run_dir:
        return 0.0
    try:
        return (Path(run_dir) / RESULT_FILE).stat().st_mtime
    except OSError:
        return 0.0


def grouped_by_experiment(results: Sequence[dict[str, Any]]) -> dict[ExperimentKey, list[dict[str, Any]]]:
    groups: dict[ExperimentKey, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(experiment_key(r), []).append(r)
    return dict(sorted(groups.items()))


def target_splits(records: Sequence[dict[str, Any]]) -> list[str]:
    """Transfer-target split names (role `target`), in the config's order when recorded."""
    names: list[str] = []
    for r in records:
        roles = split_roles(r)
        protocol = r.get("config", {}).get("protocol") if isinstance(r.get("config"), dict) else None
        configured = protocol.get("targets") if isinstance(protocol, dict) else None
        configured = [t for t in configured if isinstance(t, str)] if isinstance(configured, list) else []
        for name in list(configured) + sorted(r["splits"]):
            if name in roles and roles[name].target and name not in names:
                names.append(name)
    return names


def experiment_slugs(keys: Iterable[ExperimentKey]) -> dict[ExperimentKey, str]:
    """File-name stems per experiment: `dataset__protocol`, plus the setting only where two would clash."""
    keys = list(keys)
    base = {k: f"{k.dataset}__{k.protocol}" for k in keys}
    clashes = {b for b in base.values() if list(base.values()).count(b) > 1}
    return {k: safe_name(b if b not in clashes else f"{b}__{k.backbone}_{k.shots}shot")
            for k, b in base.items()}


def safe_name(text: str) -> str:
    """`text` with every character but letters, digits and `._-` replaced by `-` (file-name stems)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)
