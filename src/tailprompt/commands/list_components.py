"""`tailprompt list`: presets, learners, objectives, training hooks, datasets, protocols."""

from __future__ import annotations

import argparse

SECTIONS = ("learners", "objectives", "hooks", "datasets", "protocols")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list presets, learners, objectives, training hooks, datasets and protocols")
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "presets", *SECTIONS])
    p.set_defaults(func=run)


def registry_names(section: str) -> list[str]:
    """Names registered in one section; imports only that section's modules (presets need no torch)."""
    if section == "learners":
        from tailprompt.prompts import LEARNERS

        return LEARNERS.names()
    if section == "objectives":
        from tailprompt.objectives import OBJECTIVES

        return OBJECTIVES.names()
    if section == "hooks":
        from tailprompt.hooks import HOOKS

        return HOOKS.names()
    if section == "datasets":
        import tailprompt.data  # noqa: F401  (registers the CoOp-layout datasets)
        import tailprompt.world  # noqa: F401  (registers the world datasets)
        from tailprompt.data.registry import DATASETS

        return DATASETS.names()
    from tailprompt.protocols import PROTOCOLS

    return PROTOCOLS.names()


def print_presets() -> None:
    from tailprompt.engine.resolve import list_presets, preset_path
    from tailprompt.schema import load_yaml

    print("presets:")
    for name in list_presets():
        data = load_yaml(preset_path(name))
        objs = " + ".join(o["name"] for o in data.get("objectives", []))
        objs += "".join(f" [{h['name']}]" for h in data.get("hooks", []))
        print(f"  {name:<18} {data.get('learner', {}).get('name', '?'):<9} {objs}  {data.get('description', '')}")


def run(args: argparse.Namespace) -> int:
    if args.what in ("all", "presets"):
        print_presets()
    for section in SECTIONS:
        if args.what in ("all", section):
            print(f"{section}: {', '.join(registry_names(section))}")
    return 0
