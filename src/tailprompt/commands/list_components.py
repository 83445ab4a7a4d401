"""`tailprompt list`: presets, learners, objectives, training hooks, datasets, protocols."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list presets, learners, objectives, training hooks, datasets and protocols")
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "presets", "learners", "objectives", "hooks", "datasets", "protocols"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tailprompt.data  # noqa: F401  (registers datasets)
    import tailprompt.world  # noqa: F401  (registers the world datasets)
    from tailprompt.data.registry import DATASETS
    from tailprompt.engine.resolve import list_presets, preset_path
    from tailprompt.hooks import HOOKS
    from tailprompt.objectives import OBJECTIVES
    from tailprompt.prompts import LEARNERS
    from tailprompt.protocols import PROTOCOLS
    from tailprompt.schema import load_yaml

    sections = {
        "learners": LEARNERS.names(),
        "objectives": OBJECTIVES.names(),
        "hooks": HOOKS.names(),
        "datasets": DATASETS.names(),
        "protocols": PROTOCOLS.names(),
    }
    if args.what in ("all", "presets"):
        print("presets:")
        for name in list_presets():
            data = load_yaml(preset_path(name))
            objs = " + ".join(o["name"] for o in data.get("objectives", []))
            objs += "".join(f" [{h['name']}]" for h in data.get("hooks", []))
            print(f"  {name:<18} {data.get('learner', {}).get('name', '?'):<9} {objs}  {data.get('description', '')}")
    for key, names in sections.items():
        if args.what in ("all", key):
            print(f"{key}: {', '.join(names)}")
    return 0
