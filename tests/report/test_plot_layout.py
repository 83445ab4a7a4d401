"""Figure layout: titles stay inside the figure, the reliability overlays have a legend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailprompt.report.plots import reliability_figure, seed_spread_figure
from tailprompt.report.results import experiment_key, load_results, method_order

pytest.importorskip("matplotlib")


def _inside(fig) -> bool:
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    return box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_long_suptitles_are_wrapped_inside_the_figure_and_reliability_has_a_legend(runs_dir: Path):
    records = [r for r in load_results(runs_dir) if r["method"] == "coop" and r["tau"] == 0.06]
    key = experiment_key(records[0])
    fig = reliability_figure(key, records, ["coop"])  # one panel: narrower than its title
    assert _inside(fig)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["perfect calibration", "accuracy", "gap (confidence - accuracy)"]
    spread = seed_spread_figure(key, records, method_order(records))
    assert _inside(spread)
