"""`tailprompt sweep`: expand a grid of runs and run the missing ones."""

from __future__ import annotations

import argparse

from tailprompt.cli import user_errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (methods x datasets x tau x seeds x any key), resumable",
        description="Expand FILE (keys: methods, grid, set, output_dir) into runs; runs whose result.json "
        "exists are skipped, so a killed sweep continues where it stopped when rerun.",
    )
    p.add_argument("file", help="sweep YAML, or the name of a packaged sweep (demo, cpt_table, tcpt_table)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tailprompt.engine.run import BackboneCache, run_directory
    from tailprompt.engine.sweep import expand, read_sweep, run_all
    from tailprompt.utils import configure_threads

    with user_errors():
        configs = expand(read_sweep(args.file), args.overrides)
        if args.dry_run:
            backbones = BackboneCache()
            for cfg in configs:
                run_dir = run_directory(cfg, backbones.get(cfg.backbone))
                done = (run_dir / "result.json").is_file()
                print(f"{'done' if done else 'todo'}  {run_dir}  {cfg.method} tau={cfg.data.tau} seed={cfg.seed}")
            return 0
        configure_threads()
        outcomes = run_all(configs)
    done = sum(o.skipped for o in outcomes)
    print(f"{len(outcomes)} runs: {len(outcomes) - done} run now, {done} already complete")
    return 0
