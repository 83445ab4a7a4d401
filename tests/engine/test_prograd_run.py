"""ProGrad through the engine: the preset's projection runs every step, TCPT's variant steps the guide instead."""

from __future__ import annotations

import pytest

import tailprompt.objectives.prograd as prograd
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run

SHORT = ["optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false",
         "eval.geometry=false"]


@pytest.mark.parametrize(("preset", "projects"), [("prograd", True), ("tcpt_prograd", False)])
def test_training_projects_only_when_configured(preset, projects, base_overrides, monkeypatch):
    calls = []
    original = prograd.projected_gradient

    def counted(grad, guide_grad, strength=1.0):
        calls.append(float(strength))
        return original(grad, guide_grad, strength)

    monkeypatch.setattr(prograd, "projected_gradient", counted)
    result = execute_run(resolve_config(preset, base_overrides + SHORT), BackboneCache()).result
    assert calls == ([1.0, 1.0] if projects else [])  # one parameter tensor (ctx), two steps
    curve = {k: v[0] for k, v in result["loss_curve"].items()}
    assert curve["prograd/guide"] > 0  # logged either way
    # minimised: CE alone with the projection; TCPT's variant steps the guide (weight 1) and its own terms
    expected = curve["cross_entropy/ce"] if projects else (
        curve["cross_entropy/ce"] + curve["prograd/guide"] + curve["tcpt/margin"] + 5.0 * curve["tcpt/moment"])
    assert curve["total"] == pytest.approx(expected, rel=1e-5)
