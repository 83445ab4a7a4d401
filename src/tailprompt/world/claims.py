"""The seeds' claims, checked on a set of run records (the demo's), plus the geometry the papers argue with.

Each claim is a yes/no question with its numbers, over the methods' mean (and seed spread) per imbalance
ratio tau, within one family of presets on one base learner (`coop`: cpt_coop, npt_coop, ...; `maple`:
cpt_maple, ...). Nothing is tuned here: the records are read as they are.

- CPT's HM lead (over the base learner) grows as tau falls: lead(min tau) > lead(tau 1).
- CPT's seed spread is below NPT's: the HM standard deviation over seeds, averaged over the taus.
- TCPT lowers new-class ECE against the base learner at equal accuracy: at every tau, ECE new is lower and
  new-class accuracy within `EQUAL_ACCURACY` points.
- CPT+TCPT gets both: at every tau, HM above the base learner's and new-class ECE below it.

Geometry, per method and tau, from the learned class features of the training label set: the effective
rank of the class-similarity matrix and the cluster structure (mean cosine within CPT's frozen clusters
minus across them: a global ETF flattens it towards 0, CPT's intra-cluster ETF should keep it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from tailprompt.report.results import backbone_name

EQUAL_ACCURACY = 2.0  # points of new-class accuracy within which two methods count as equally accurate
BASE_NAMES = {"coop": "CoOp", "maple": "MaPLe"}  # base learners whose preset families the claims compare

Record = dict[str, Any]


def _cells(results: Sequence[Record]) -> dict[tuple[str, float], list[Record]]:
    cells: dict[tuple[str, float], list[Record]] = {}
    for r in results:
        cells.setdefault((r["method"], float(r["tau"])), []).append(r)
    return cells


def _stat(records: list[Record], value: Callable[[Record], float | None]) -> tuple[float, float] | None:
    values = [v for v in map(value, records) if v is not None]
    if not values:
        return None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _hm(r: Record) -> float | None:
    return r.get("hm")


def _ece_new(r: Record) -> float | None:
    return r["splits"].get("new", {}).get("ece")


def _acc_new(r: Record) -> float | None:
    return r["splits"].get("new", {}).get("accuracy")


def _cluster_structure(r: Record) -> float | None:
    g = (r.get("geometry") or {}).get("learned") or {}
    if g.get("intra_cluster_cosine") is None or g.get("inter_cluster_cosine") is None:
        return None
    return g["intra_cluster_cosine"] - g["inter_cluster_cosine"]


def _effective_rank(r: Record) -> float | None:
    return ((r.get("geometry") or {}).get("learned") or {}).get("effective_rank")


def claims(results: Sequence[Record], base: str = "coop") -> list[dict[str, Any]]:
    """The four claims for the presets on `base` (`cpt_<base>`, ...) with their numbers; a claim whose
    methods did not run says so (`holds` None)."""
    COOP, CPT, NPT, TCPT, CPT_TCPT = base, f"cpt_{base}", f"npt_{base}", f"tcpt_{base}", f"cpt_tcpt_{base}"
    name = BASE_NAMES.get(base, base)
    cells = _cells(results)
    taus = sorted({tau for _, tau in cells}, reverse=True)

    def mean(method: str, tau: float, value: Callable[[Record], float | None]) -> float | None:
        stat = _stat(cells.get((method, tau), []), value)
        return None if stat is None else stat[0]

    def spread(method: str) -> float | None:
        stds = [s[1] for tau in taus if (s := _stat(cells.get((method, tau), []), _hm)) is not None]
        return statistics.fmean(stds) if stds else None

    out: list[dict[str, Any]] = []
    leads = {tau: _diff(mean(CPT, tau, _hm), mean(COOP, tau, _hm)) for tau in taus}
    have = len(taus) > 1 and all(v is not None for v in leads.values())
    out.append({"claim": f"CPT's HM lead over {name} grows as tau falls", "lead_by_tau": leads,
                "holds": (leads[taus[-1]] > leads[taus[0]]) if have else None})
    cpt_std, npt_std = spread(CPT), spread(NPT)
    out.append({"claim": "CPT's seed spread (HM std) is below NPT's", "cpt": cpt_std, "npt": npt_std,
                "holds": (cpt_std < npt_std) if cpt_std is not None and npt_std is not None else None})
    rows, ok = {}, []
    for tau in taus:
        d_ece = _diff(mean(TCPT, tau, _ece_new), mean(COOP, tau, _ece_new))
        d_acc = _diff(mean(TCPT, tau, _acc_new), mean(COOP, tau, _acc_new))
        rows[tau] = {"ece_new_change": d_ece, "acc_new_change": d_acc}
        if d_ece is not None and d_acc is not None:
            ok.append(d_ece < 0 and abs(d_acc) <= EQUAL_ACCURACY)
    out.append({"claim": f"TCPT lowers new-class ECE against {name} at equal accuracy (within {EQUAL_ACCURACY:g})",
                "by_tau": rows, "holds": all(ok) if ok and len(ok) == len(taus) else None})
    rows, ok = {}, []
    for tau in taus:
        d_hm = _diff(mean(CPT_TCPT, tau, _hm), mean(COOP, tau, _hm))
        d_ece = _diff(mean(CPT_TCPT, tau, _ece_new), mean(COOP, tau, _ece_new))
        rows[tau] = {"hm_change": d_hm, "ece_new_change": d_ece}
        if d_hm is not None and d_ece is not None:
            ok.append(d_hm > 0 and d_ece < 0)
    out.append({"claim": f"CPT+TCPT gets both: HM above {name}'s and new-class ECE below it", "by_tau": rows,
                "holds": all(ok) if ok and len(ok) == len(taus) else None})
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def geometry_rows(results: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (method, tau): mean effective rank and cluster structure of the learned class features."""
    rows = []
    for (method, tau), records in sorted(_cells(results).items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        rank, structure = _stat(records, _effective_rank), _stat(records, _cluster_structure)
        rows.append({"method": method, "tau": tau, "effective_rank": rank and rank[0],
                     "cluster_structure": structure and structure[0]})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:+.2f}" if isinstance(v, float) else str(v)


def render_markdown(results: Sequence[Record]) -> str:
    """The claims and the geometry as markdown (what `tailprompt demo` prints after the tables): one section
    per backbone, with the claims of each base learner whose presets ran on it."""
    backbones = sorted({backbone_name(r) for r in results})
    sections = []
    for backbone in backbones:
        records = [r for r in results if backbone_name(r) == backbone]
        title = f" ({backbone})" if len(backbones) > 1 else ""
        sections.append(_backbone_markdown(records, title))
    return "\n\n".join(sections)


def _backbone_markdown(results: Sequence[Record], title: str) -> str:
    lines: list[str] = []
    methods = {r["method"] for r in results}
    for base in [b for b in BASE_NAMES if b in methods] or ["coop"]:
        if lines:
            lines.append("")
        lines += [f"#### The seeds' claims on these runs{title}", "", "| claim | holds | numbers |", "|:--|:--|:--|"]
        for c in claims(results, base):
            numbers = {k: v for k, v in c.items() if k not in ("claim", "holds")}
            text = "; ".join(f"{k}: {_numbers(v)}" for k, v in numbers.items())
            lines.append(f"| {c['claim']} | {_fmt(c['holds'])} | {text} |")
    taus = sorted({float(r["tau"]) for r in results}, reverse=True)
    geo = geometry_rows(results)
    lines += ["", f"#### Geometry of the learned class features (mean over seeds){title}", "",
              "Effective rank of the class-similarity matrix / cluster structure (mean cosine within CPT's "
              "frozen clusters minus across them).", "",
              "| Method | " + " | ".join(f"τ={t:g} rank | τ={t:g} clusters" for t in taus) + " |",
              "|:--|" + "--:|" * (2 * len(taus))]
    for method in sorted({g["method"] for g in geo}):
        cells = []
        for t in taus:
            g = next((g for g in geo if g["method"] == method and g["tau"] == t), None)
            cells += [_plain(g and g["effective_rank"]), _plain(g and g["cluster_structure"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _numbers(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"τ={k:g} {_numbers(x)}" if isinstance(k, float) else f"{k} {_fmt(x)}"
                         for k, x in v.items())
    return _fmt(v)
