"""Fixtures for the report tests: synthetic run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import METHODS, SEEDS, TAUS, make_result, write_run


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """2 methods x 2 tau x 3 seeds of base-to-new runs, plus one unfinished run folder."""
    root = tmp_path / "runs"
    for method in METHODS:
        for tau in TAUS:
            for seed in SEEDS:
                write_run(root, make_result(method, tau, seed))
    (root / "unfinished-run").mkdir()
    (root / "unfinished-run" / "config.yaml").write_text("seed: 1\n")
    return root
