"""`report --html` in a real browser: Debian's chromium, headless, loads the page from disk."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tailprompt.cli import main
from tailprompt.report import load_results, summary_tables

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run installs it)"
)


def _chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root; a fresh profile dir keeps runs independent
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory, request) -> Path:
    pytest.importorskip("matplotlib")
    from report_fixtures import METHODS, SEEDS, TAUS, make_result, write_run

    runs = tmp_path_factory.mktemp("html_runs") / "runs"
    for method in METHODS:
        for tau in TAUS:
            for seed in SEEDS:
                write_run(runs, make_result(method, tau, seed))
    assert main(["report", str(runs), "--html"]) == 0
    return runs / "report" / "report.html"


def _dom(page: Path, tmp_path: Path, fragment: str = "") -> tuple[str, str]:
    out = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri() + fragment)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


def test_every_section_renders_without_console_errors(page, tmp_path):
    dom, log = _dom(page, tmp_path)
    assert 'data-rendered="ok"' in dom  # the page's script ran to its end
    assert re.search(r'<ul id="js-errors"></ul>', dom)  # window.onerror collected nothing
    assert not re.search(r"Uncaught|CONSOLE.*(Error|error)", log), log[-2000:]
    tables = summary_tables(load_results(page.parent.parent), extra=True)
    for t in tables:
        assert f'id="sec-{t.key}"' in dom and f'id="{t.key}"' in dom
    assert 'id="runs-index"' in dom and dom.count("<img ") == len(list(page.parent.glob("*.png")))
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]+)"', dom))
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # no network
    assert f"rendered {len(tables) + 1} tables" in dom


def test_tables_sort_in_the_browser(page, tmp_path):
    key = next(t.key for t in summary_tables(load_results(page.parent.parent), extra=True) if t.kind == "accuracy")
    for fragment, expected in ((f"#sort={key}:0:desc", ["cpt_coop", "coop"]), (f"#sort={key}:0", ["coop", "cpt_coop"])):
        dom, _ = _dom(page, tmp_path, fragment)
        table = re.search(rf'<table id="{key}".*?</table>', dom, flags=re.S).group(0)
        assert re.findall(r'<tr><td class="label" data-sort="([^"]+)"', table) == expected
        assert 'aria-sort="' + ("descending" if fragment.endswith("desc") else "ascending") + '"' in table


def test_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    out = _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
                    page.as_uri())
    assert out.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
    # keep it next to the report, for a person (or CI artefacts) to look at
    shutil.copy(shot, page.parent / "report_screenshot.png")
