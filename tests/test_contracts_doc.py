"""The worked example in docs/contracts.md is a working learner: build it, train its shift, transfer it."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import torch

import tailprompt.prompts.learner as learner_module
from tailprompt.backbone import load_backbone
from tailprompt.registry import Registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def test_the_documented_learner_builds_trains_and_transfers(monkeypatch):
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert 25 <= len(code.strip().splitlines()) <= 40
    registry = Registry("learner")  # a private registry: the example does not leak into other tests
    monkeypatch.setattr(learner_module, "LEARNERS", registry)
    module = types.ModuleType("contracts_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    cls = registry.get("shift")
    backbone = load_backbone("tiny-vit")
    learner = learner_module.build_learner("shift", cls.config_cls(), backbone, ["cat", "dog"], "a photo of a {}.")
    before = learner.text_features()
    assert before.shape == (2, backbone.embed_dim) and list(learner.prompt_state()) == ["shift"]
    loss = -(learner.text_features()[0] @ learner.text_features()[1])
    loss.backward()
    assert learner.shift.grad is not None and learner.shift.grad.abs().sum() > 0
    with torch.no_grad():
        learner.shift.add_(1.0)
    learner.set_classnames(["tree", "car", "boat"], "a photo of a {}.", seen=False)
    assert learner.text_features().shape == (3, backbone.embed_dim)
