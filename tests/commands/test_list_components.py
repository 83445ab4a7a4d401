"""`tailprompt list`: the registries' names, kept in a catalogue keyed by the installed source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tailprompt import cli
from tailprompt.commands import list_components as lc

SRC = Path(cli.__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision")  # presets read numpy-using config code (~0.1 s)


def _listing_in_fresh_interpreter(cache: Path, what: str = "all") -> tuple[str, list[str]]:
    """(stdout of `tailprompt list what`, heavy modules it imported) in a new process."""
    code = (
        "import sys\n"
        "from tailprompt.cli import main\n"
        f"rc = main(['list', {what!r}])\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "TAILPROMPT_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    text, heavy = out.stdout.rsplit("HEAVY=", 1)
    return text, [m for m in heavy.strip().split(",") if m]


def test_the_second_listing_reads_the_catalogue_without_torch_and_prints_the_same(tmp_path):
    first, heavy_first = _listing_in_fresh_interpreter(tmp_path)
    second, heavy_second = _listing_in_fresh_interpreter(tmp_path)
    assert "torch" in heavy_first  # the registries were read live
    assert heavy_second == []
    assert first == second
    live = {section: lc.registry_names(section) for section in lc.SECTIONS}
    for section, names in live.items():
        assert f"{section}: {', '.join(names)}" in second
    one, _ = _listing_in_fresh_interpreter(tmp_path, "protocols")
    assert one.strip() == f"protocols: {', '.join(live['protocols'])}"


def test_a_changed_source_tree_rereads_the_registries_and_drops_the_old_catalogue(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr(lc, "source_key", lambda: "tree-a")
    assert lc.catalogue() == {s: lc.registry_names(s) for s in lc.SECTIONS}
    old = lc.catalogue_path("tree-a")
    assert old.is_file()
    monkeypatch.setattr(lc, "source_key", lambda: "tree-b")
    lc.catalogue()
    assert lc.catalogue_path("tree-b").is_file() and not old.exists()


def test_a_damaged_catalogue_is_replaced_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr(lc, "source_key", lambda: "tree")
    path = lc.catalogue_path("tree")
    path.parent.mkdir(parents=True)
    for bad in ("{not json", json.dumps({"learners": ["coop"]}), json.dumps({s: [1] for s in lc.SECTIONS})):
        path.write_text(bad)
        assert lc.catalogue() == {s: lc.registry_names(s) for s in lc.SECTIONS}
        assert json.loads(path.read_text()) == lc.catalogue()


def test_an_unwritable_cache_folder_still_lists(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TAILPROMPT_CACHE", str(blocker))  # a file where the cache folder should be
    assert cli.main(["list", "hooks"]) == 0
    assert capsys.readouterr().out.strip() == f"hooks: {', '.join(lc.registry_names('hooks'))}"


def test_the_source_key_follows_the_package_files(tmp_path, monkeypatch):
    import tailprompt

    pkg = tmp_path / "pkg"
    (pkg / "prompts").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    learner = pkg / "prompts" / "new_method.py"
    learner.write_text("X = 1\n")
    monkeypatch.setattr(tailprompt, "__file__", str(pkg / "__init__.py"))
    before = lc.source_key()
    assert lc.source_key() == before  # nothing changed
    learner.write_text("X = 1\nLEARNERS = 2\n")  # an edited (or added) module
    assert lc.source_key() != before
    monkeypatch.setattr(tailprompt, "__version__", "99.0")
    assert len({before, lc.source_key()}) == 2
