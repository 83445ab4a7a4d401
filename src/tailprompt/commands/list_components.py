"""`tailprompt list`: presets, learners, objectives, training hooks, datasets, protocols.

Presets are YAML files and list without torch. The other sections are registries filled by importing torch
modules (~2 s), so their names are kept in a catalogue file in the cache folder, keyed by the package's
source files (path, size, modification time) and version: any edit or upgrade of the installed package
makes the next `list` read the registries again and rewrite it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

from tailprompt.utils import default_cache_dir, write_json_atomic

SECTIONS = ("learners", "objectives", "hooks", "datasets", "protocols")

log = logging.getLogger(__name__)


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


def source_key() -> str:
    """Hash of the installed package's version and its source files' paths, sizes and modification times."""
    import tailprompt

    root = Path(tailprompt.__file__).parent
    digest = hashlib.sha256(tailprompt.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def catalogue_path(key: str) -> Path:
    return default_cache_dir() / "catalogue" / f"{key}.json"


def cached_catalogue(path: Path) -> dict[str, list[str]] | None:
    """The registries' names stored for this source tree, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or sorted(data) != sorted(SECTIONS):
        return None
    if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in data.values()):
        return None
    return data


def catalogue() -> dict[str, list[str]]:
    """Names of every registry section: from the catalogue file when it matches the source, else read live
    (and stored; a cache folder that cannot be written only costs the next call the same ~2 s)."""
    path = catalogue_path(source_key())
    found = cached_catalogue(path)
    if found is not None:
        return found
    names = {section: registry_names(section) for section in SECTIONS}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, names)
        for old in path.parent.glob("*.json"):  # catalogues of earlier source trees
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        log.debug("list: catalogue not stored at %s (%s)", path, e)
    return names


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
    if args.what == "presets":
        return 0
    names = catalogue()
    for section in SECTIONS:
        if args.what in ("all", section):
            print(f"{section}: {', '.join(names[section])}")
    return 0
