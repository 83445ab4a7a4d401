"""`tailprompt demo`: the main job on the embedded default, then the report."""

from __future__ import annotations

import argparse
import dataclasses
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from tailprompt.errors import UserError

if TYPE_CHECKING:
    from tailprompt.engine.sweep import SweepSpec


def sweep_file(quick: bool, deep: bool = False) -> Path:
    """The packaged sweep: the demo (`quick`: its smoke version) or, `deep`, its deep-prompt rows."""
    name = "demo_deep.yaml" if deep else "demo_quick.yaml" if quick else "demo.yaml"
    return Path(str(resources.files("tailprompt") / "configs" / "sweeps" / name))


def demo_spec(quick: bool, seeds: int | None = None, deep: bool = False) -> SweepSpec:
    """One of the demo's sweeps; `seeds` replaces its seed list by 1..seeds (the README's table: 5)."""
    from tailprompt.engine.sweep import read_sweep

    spec = read_sweep(sweep_file(quick, deep))
    if seeds is None:
        return spec
    return dataclasses.replace(spec, grid={**spec.grid, "seed": list(range(1, seeds + 1))})


def demo_specs(quick: bool, seeds: int | None, deep: bool) -> list[SweepSpec]:
    """The sweeps `tailprompt demo` runs: the demo's, then with `deep` its deep-prompt rows."""
    return [demo_spec(quick, seeds)] + ([demo_spec(quick, seeds, deep=True)] if deep else [])


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run base-to-new on the embedded world for the *_coop methods at 3 imbalance ratios, 2 seeds, and report",
        description="Runs the packaged sweep configs/sweeps/demo.yaml (embedded backbone, `world` dataset, "
        "tau 1 / 0.25 / 0.06, seeds 1-2, a shorter schedule than the papers') and writes the report. "
        "Runs already complete in OUT are reused.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke version, under a minute: 4 methods, 2 imbalance ratios, 1 seed, 2 epochs; its "
                   "numbers mean nothing (configs/sweeps/demo_quick.yaml)")
    p.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                   help="run seeds 1..N instead of the sweep's (README's table: --seeds 5, about 2.5x the time); "
                   "runs already in OUT are reused")
    p.add_argument("--deep", action="store_true",
                   help="also run the deep-prompt rows (configs/sweeps/demo_deep.yaml: maple, npt_maple, "
                   "cpt_maple, tcpt_maple, cpt_tcpt_maple on the embedded-vit backbone, each with its preset "
                   "schedule; about 50 s per run on one thread, not part of make demo)")
    p.add_argument("--out", default="runs/demo", help="output folder for runs and report (default runs/demo)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tailprompt.engine.sweep import expand, run_all
    from tailprompt.report import load_results, render_table, summary_tables, write_report
    from tailprompt.utils import configure_threads, write_text_atomic
    from tailprompt.world.claims import render_markdown

    if args.quick and args.deep:
        raise UserError("--deep has no quick version: run `tailprompt demo --deep` (or --quick alone)")
    t0 = time.perf_counter()
    threads = configure_threads()
    out = Path(args.out)
    specs = demo_specs(args.quick, args.seeds, args.deep)
    configs = [c for spec in specs for c in expand(spec, [f"output_dir={out / 'runs'}"])]
    methods = sum(len(spec.methods) for spec in specs)
    print(f"demo: {len(configs)} runs ({methods} methods), torch threads: {threads}, output: {out}")
    run_all(configs)
    results = load_results(out / "runs")
    paths = write_report(out / "runs", out / "report", fmt="md", plots=not args.no_plots)
    for table in summary_tables(results):
        print()
        print(render_table(table, "md"))
    claims_md = render_markdown(results)
    write_text_atomic(out / "report" / "claims.md", claims_md + "\n")
    print()
    print(claims_md)
    print(f"\nreport: {', '.join(str(p) for p in [*paths, out / 'report' / 'claims.md'])}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
