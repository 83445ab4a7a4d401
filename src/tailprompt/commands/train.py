"""`tailprompt train`: resolve a config, run it, write runs/<run_id>/."""

from __future__ import annotations

import argparse
import json

from tailprompt.cli import user_errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one run (learner + objectives + protocol) and write runs/<run_id>/",
        description="Resolve defaults <- preset/file <- --set overrides, train, evaluate, and write "
        "config.yaml, result.json, prompts.safetensors and features.safetensors under OUTPUT_DIR/<run_id>/. "
        "An existing complete run is not redone (use --force); an unfinished one resumes from its last "
        "training checkpoint. Under `torchrun --nproc_per_node N -m tailprompt train ...` the N processes split "
        "every batch (data parallel; same global batch, learning rate and augmentation seeds as one process) "
        "and rank 0 writes the run.",
    )
    p.add_argument("--config", default="coop", help="a method preset (see `tailprompt list`) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.tau=0.06 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="redo the run from scratch even if its result or a checkpoint exists")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tailprompt.engine.distributed import finish, init_from_env, threads_per_rank
    from tailprompt.engine.resolve import resolve_config
    from tailprompt.engine.run import execute_run
    from tailprompt.schema import dump_yaml
    from tailprompt.utils import configure_threads, free_cores

    with user_errors():
        cfg = resolve_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        group = init_from_env()
        configure_threads(threads_per_rank(free_cores()) if group else None)
        try:
            outcome = execute_run(cfg, progress=True, force=args.force, group=group)
        finally:
            finish(group)
    if group is not None and not group.is_main:
        return 0
    r = outcome.result
    summary = {"run_dir": str(outcome.run_dir), "skipped": outcome.skipped, "hm": r.get("hm"),
               **{f"{name}_acc": s["accuracy"] for name, s in r["splits"].items()},
               **{f"{name}_ece": s["ece"] for name, s in r["splits"].items()}}
    print(json.dumps(summary, indent=2))
    return 0
