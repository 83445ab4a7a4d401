"""Every learner that shares `[SOS][context]` across classes gets the plain pass's features and gradients."""

from __future__ import annotations

import pytest
import torch

from spies import shared_prefix_calls
from tailprompt.backbone.frozen import FrozenVLM
from tailprompt.prompts.common import shared_context_prefix

from .conftest import build

TOL = 1e-5

SHARED = [
    ("coop", {}),
    ("coop", {"n_ctx": 16, "ctx_init": ""}),  # the few-shot paper row
    ("kgcoop", {}),
    ("maple", {"prompt_depth": 3}),  # deep prompts at text blocks 1 and 2
    ("maple", {"prompt_depth": 1}),
    ("cocoop", {}),
    # learners built on those
    ("prograd", {}),
    ("coprompt", {"prompt_depth": 3}),
    ("promptsrc", {"prompt_depth_text": 3, "prompt_depth_vision": 3}),
]
NOT_SHARED = [
    ("coop", {"class_token_position": "middle", "ctx_init": "", "n_ctx": 4}),
    ("coop", {"class_token_position": "front", "ctx_init": "", "n_ctx": 4}),
    ("coop", {"csc": True, "ctx_init": "", "n_ctx": 4}),
]


def _perturbed(name, backbone, overrides):
    learner = build(name, backbone, **overrides)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return learner


def _features_and_grads(learner, image_feats):
    feats = learner.text_features(image_feats)
    weights = torch.linspace(-1, 1, feats.numel()).reshape(feats.shape)
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad((feats * weights).sum(), params, allow_unused=True)
    return feats.detach(), {n: g for (n, _), g in zip(learner.named_parameters(), grads) if g is not None}


@pytest.mark.parametrize(("name", "overrides"), SHARED)
def test_shared_prefix_learners_equal_the_plain_pass(backbone, images, monkeypatch, name, overrides):
    learner = _perturbed(name, backbone, overrides)
    with torch.no_grad():
        image_feats = torch.nn.functional.normalize(backbone.encode_image(images), dim=-1)
    calls = shared_prefix_calls(monkeypatch)
    shared, shared_grads = _features_and_grads(learner, image_feats)
    assert calls and all(p == 1 + learner.n_ctx for p in calls)
    monkeypatch.setattr(FrozenVLM, "_prefix_applies", lambda *args: False)
    plain, plain_grads = _features_and_grads(learner, image_feats)
    assert (shared - plain).abs().max() <= TOL
    assert shared_grads.keys() == plain_grads.keys() and "ctx" in plain_grads
    for key, grad in plain_grads.items():
        assert (shared_grads[key] - grad).abs().max() <= TOL, key
    deep = {"maple": "compound_prompts_text.1", "coprompt": "compound_prompts_text.1",
            "promptsrc": "deep_text_prompts.1"}.get(name)
    if deep and max(overrides.get("prompt_depth", 0), overrides.get("prompt_depth_text", 0)) > 1:
        assert plain_grads[deep].abs().max() > 1e-4  # the deep prompts (inside the prefix) do train


@pytest.mark.parametrize(("name", "overrides"), NOT_SHARED)
def test_class_dependent_prefixes_take_the_plain_pass(backbone, monkeypatch, name, overrides):
    learner = _perturbed(name, backbone, overrides)
    calls = shared_prefix_calls(monkeypatch)
    learner.text_features()
    assert calls == []


def test_shared_context_prefix_length():
    assert shared_context_prefix(4) == 5
    assert shared_context_prefix(16, "end", csc=False) == 17
    assert shared_context_prefix(4, "middle") == shared_context_prefix(4, "front") == 0
    assert shared_context_prefix(4, "end", csc=True) == 0
