"""DPC stage 2 against an independent re-implementation of the reference's CoOp+DPC prompt learner."""

from __future__ import annotations

import warnings

import pytest
import torch

from tailprompt.cli import UserError
from tailprompt.engine.run_config import LearnerConfig
from tailprompt.prompts.dpc import DPC, DPCConfig
from tailprompt.schema import ConfigError, from_dict

from .conftest import CLASSNAMES, OTHER_CLASSNAMES, TEMPLATE, build

NAMES = [n.replace("_", " ") for n in CLASSNAMES]
NEW_NAMES = [n.replace("_", " ") for n in OTHER_CLASSNAMES]


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def random_like(t, seed):
    g = torch.Generator().manual_seed(seed)
    return t + 0.05 * torch.randn(t.shape, generator=g)


def make_dpc(backbone, classnames=CLASSNAMES, seed=0, **options):
    """A `dpc` learner from plain options, typed as a preset's `learner:` section is."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maple's depth clamp on the tiny backbone
        return DPC(from_dict(DPCConfig, options, "learner"), backbone, list(classnames), TEMPLATE)


def dassl_checkpoint(ctx, prefix, suffix):
    """A reference Dassl checkpoint of a CoOp(-style) prompt learner: fixed buffers saved with the context."""
    return {"state_dict": {"ctx": ctx, "token_prefix": prefix, "token_suffix": suffix}, "epoch": 10}


def reference_coop_text(backbone, names, ctx):
    """The reference `TextEncoder(PromptLearner())`: `[SOS][ctx][name .][EOS]` over the full 77 tokens."""
    tokens = backbone.tokenize([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        x = backbone.embed_tokens(tokens)
    prompts = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), x[:, 1 + ctx.shape[0] :]], 1)
    return unit(backbone.encode_text_from_embeddings(prompts, tokens.argmax(-1)))


class ReferenceStackPrompt:
    """The prompt state of `sple_coop.py`'s `PromptLearner` in stack mode, with its storage as it is.

    With `SPLE_INIT` the parameter wraps the stage-1 tensor itself (`nn.Parameter(self.pretuned_ctx)`), so
    optimiser steps and `load_state_dict` (an in-place copy) change `pretuned_ctx` too; without it the mix is
    a tensor of its own.
    """

    def __init__(self, pretuned, weight, mode, sple_init=True, fresh=None):
        self.weight, self.mode = weight, mode
        self.pretuned_ctx = pretuned.clone()
        mixed = self.pretuned_ctx if sple_init else weight * fresh + (1 - weight) * self.pretuned_ctx
        self.ctx = torch.nn.Parameter(mixed)

    def load(self, ctx):
        with torch.no_grad():
            self.ctx.copy_(ctx)
        return self

    def forward(self):
        if "converse" in self.mode:
            return (self.ctx - (1 - self.weight) * self.pretuned_ctx) * (1 / self.weight)
        return self.ctx


def reference_new_class_ctx(stored, pretuned, weight, weight_for_new, mode):
    """`StackSPLE_CoOp.load_model` for `SUBSAMPLE_CLASSES new`: the tensor it writes into `ctx`."""
    if "simple" in mode:
        stack = (stored - (1 - weight) * pretuned) * (1 / weight)
    else:
        stack = stored
    return weight_for_new * stack + (1 - weight_for_new) * pretuned


@pytest.mark.parametrize("mode", ["converse", "simple"])
@pytest.mark.parametrize(("weight", "weight_for_new"), [(0.5, 0.0), (0.2, 0.2), (0.5, 0.2)])
@pytest.mark.parametrize("init_from_stage1", [True, False])
def test_coop_dpc_equals_the_reference_on_base_and_new_classes(backbone, mode, weight, weight_for_new,
                                                               init_from_stage1):
    learner = make_dpc(backbone, weight=weight, weight_for_new=weight_for_new, mode=mode,
                       init_from_stage1=init_from_stage1)
    w = backbone.text_width
    pretuned = random_like(torch.zeros(4, w), 1)  # stage-1 ctx
    stored = random_like(pretuned, 2)  # the stage-2 parameter after some training
    prefix, suffix = learner.token_prefix, learner.token_suffix  # saved and dropped by the reference
    learner.load_initial_state(dassl_checkpoint(pretuned, prefix, suffix))
    learner.load_prompt_state(dassl_checkpoint(stored, prefix, suffix))
    assert torch.equal(learner.ctx.detach(), stored)

    def reference(loaded):  # a fresh reference process: build from the stage-1 file, then load_model
        return ReferenceStackPrompt(pretuned, weight, mode, init_from_stage1, fresh=pretuned).load(loaded).forward()

    with torch.no_grad():
        base_ctx = reference(stored)
        torch.testing.assert_close(learner.text_features(), reference_coop_text(backbone, NAMES, base_ctx),
                                   atol=1e-6, rtol=0)
        learner.set_classnames(OTHER_CLASSNAMES, TEMPLATE, seen=False)
        new_ctx = reference(reference_new_class_ctx(stored, pretuned, weight, weight_for_new, mode))
        torch.testing.assert_close(learner.text_features(), reference_coop_text(backbone, NEW_NAMES, new_ctx),
                                   atol=1e-6, rtol=0)
        learner.set_classnames(CLASSNAMES, TEMPLATE, seen=True)
        torch.testing.assert_close(learner.text_features(), reference_coop_text(backbone, NAMES, base_ctx),
                                   atol=1e-6, rtol=0)
    if mode == "converse" and init_from_stage1:  # the shared storage: the stored tensor is P' itself
        torch.testing.assert_close(base_ctx, stored, atol=1e-7, rtol=0)


def test_frozen_stage1_keeps_p_at_the_stage1_values(backbone):
    weight = 0.5
    learner = make_dpc(backbone, weight=weight, frozen_stage1=True)
    pretuned = random_like(torch.zeros(4, backbone.text_width), 1)
    stored = random_like(pretuned, 2)
    learner.load_initial_state({"ctx": pretuned})
    learner.load_prompt_state({"ctx": stored})
    with torch.no_grad():
        expected = reference_coop_text(backbone, NAMES, (stored - (1 - weight) * pretuned) * (1 / weight))
        torch.testing.assert_close(learner.text_features(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frozen_stage1", [False, True])
def test_training_moves_the_references_shared_stage1_tensor_with_the_parameter(backbone, frozen_stage1):
    weight = 0.5
    learner = make_dpc(backbone, weight=weight, frozen_stage1=frozen_stage1)
    pretuned = random_like(learner.ctx.detach(), 7)
    learner.load_initial_state({"ctx": pretuned})
    reference = ReferenceStackPrompt(pretuned, weight, "converse")
    probe = torch.randn(len(NAMES), backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    ours = torch.optim.SGD([learner.ctx], lr=0.5, momentum=0.9, weight_decay=5e-4)
    theirs = torch.optim.SGD([reference.ctx], lr=0.5, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        for opt, feats in ((ours, learner.text_features),
                           (theirs, lambda: reference_coop_text(backbone, NAMES, reference.forward()))):
            opt.zero_grad()
            (feats() * probe).sum().backward()
            opt.step()
    assert torch.equal(reference.pretuned_ctx, reference.ctx.detach())  # P followed every step
    assert not torch.allclose(reference.ctx.detach(), pretuned)
    # CoOp encodes the shared prefix once (gradients summed in another order): ~1e-5 apart after 3 steps;
    # a P kept at the stage-1 values (the paper's reading) moves the prompt twice as far per step.
    with torch.no_grad():
        apart = (learner.effective_parameters()["ctx"] - reference.forward()).abs().max().item()
    assert apart > 1e-2 if frozen_stage1 else apart < 1e-4, apart
    torch.testing.assert_close(learner.stage1.get("ctx"), pretuned)  # the hard negatives' model stays stage 1


def test_converse_new_classes_with_zero_weight_are_the_stage1_prompts(backbone):
    learner = make_dpc(backbone)
    stage1 = build("coop", backbone, seed=5)
    stage1.ctx.data = random_like(stage1.ctx.detach(), 3)
    learner.load_initial_state(stage1.prompt_state())
    learner.ctx.data = random_like(learner.ctx.detach(), 4)  # stage 2 moved M
    for names in (CLASSNAMES, OTHER_CLASSNAMES):
        learner.set_classnames(names, TEMPLATE, seen=False)
        stage1.set_classnames(names, TEMPLATE)
        with torch.no_grad():
            torch.testing.assert_close(learner.text_features(), stage1.text_features(), atol=1e-6, rtol=0)


def test_stage2_starts_at_the_stage1_prompt_and_trains_through_the_parallel_prompt(backbone):
    weight = 0.2
    learner = make_dpc(backbone, weight=weight)
    pretuned = random_like(learner.ctx.detach(), 7)
    learner.load_initial_state({"ctx": pretuned})
    assert torch.equal(learner.ctx.detach(), pretuned)  # SPLE_INIT: M = P
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), reference_coop_text(backbone, NAMES, pretuned),
                                   atol=1e-6, rtol=0)
    probe = torch.randn(len(NAMES), backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    (learner.text_features() * probe).sum().backward()
    # Reference: the parameter feeds the tower through (ctx - (1 - w) P) / w, with P its own storage.
    reference = ReferenceStackPrompt(pretuned, weight, "converse")
    ref = reference_coop_text(backbone, NAMES, reference.forward())
    (ref * probe).sum().backward()
    # CoOp encodes the shared prefix once (same features, gradients summed in another order): ~1e-5 apart.
    torch.testing.assert_close(learner.ctx.grad, reference.ctx.grad, atol=1e-4, rtol=1e-3)
    assert not torch.allclose(learner.ctx.grad, reference.ctx.grad * weight, atol=1e-4, rtol=1e-3)  # the 1 / w
    assert learner.stage1.get("ctx").grad is None and not learner.stage1.get("ctx").requires_grad


def test_random_init_mixes_the_fresh_context_with_the_stage1_prompt(backbone):
    learner = make_dpc(backbone, weight=0.5, init_from_stage1=False)
    fresh = learner.ctx.detach().clone()  # "a photo of a" embeddings
    pretuned = random_like(fresh, 8)
    learner.load_initial_state({"ctx": pretuned})
    torch.testing.assert_close(learner.ctx.detach(), 0.5 * fresh + 0.5 * pretuned, atol=0, rtol=0)


def test_prompt_state_is_the_stored_mix_under_reference_names(backbone):
    learner = make_dpc(backbone)
    stage1 = {"ctx": random_like(learner.ctx.detach(), 1)}
    learner.load_initial_state(stage1)
    learner.ctx.data = random_like(learner.ctx.detach(), 2)
    state = learner.prompt_state()
    assert set(state) == set(learner.state_dict()) == {"ctx"}  # the stage-1 copy is not part of the state
    assert [p for p in learner.parameters()] == [learner.ctx]
    again = make_dpc(backbone, seed=9)
    again.load_initial_state(stage1)  # as the reference reloads the stage-1 checkpoint before the stage-2 one
    again.load_prompt_state(state)
    for seen, names in ((True, CLASSNAMES), (False, OTHER_CLASSNAMES)):
        learner.set_classnames(names, TEMPLATE, seen=seen)
        again.set_classnames(names, TEMPLATE, seen=seen)
        with torch.no_grad():
            assert torch.equal(learner.text_features(), again.text_features())


def test_the_learner_is_its_base_learner_with_dual_prompts(backbone):
    from tailprompt.prompts.coop import CoOp
    from tailprompt.prompts.maple import MaPLe

    coop, maple = make_dpc(backbone), make_dpc(backbone, base={"name": "maple", "prompt_depth": 2})
    assert isinstance(coop, CoOp) and isinstance(coop, DPC) and coop.name == "dpc" and coop.base_name == "coop"
    assert isinstance(maple, MaPLe) and maple.uses_image_tower and not coop.uses_image_tower
    assert type(make_dpc(backbone)) is type(coop)  # one subclass per base learner class


def test_stage1_features_for_the_hard_negative_objective(backbone, images):
    learner = make_dpc(backbone)
    stage1 = build("coop", backbone)
    stage1.ctx.data = random_like(stage1.ctx.detach(), 3)
    learner.load_initial_state(stage1.prompt_state())
    learner.ctx.data = random_like(learner.ctx.detach(), 4)
    aux = learner.aux_outputs()
    with torch.no_grad():
        torch.testing.assert_close(aux["dpc_stage1_text_feats"], stage1.text_features(), atol=1e-6, rtol=0)
    assert "dpc_stage1_image_feats" not in aux  # the frozen tower: the step's own image features
    assert not learner.uses_image_tower


@pytest.mark.parametrize("frozen_stage1", [False, True])
def test_maple_dpc_runs_maple_with_the_recovered_prompts(backbone, images, frozen_stage1):
    learner = make_dpc(backbone, base={"name": "maple", "prompt_depth": 3}, weight=0.5, frozen_stage1=frozen_stage1)
    assert learner.uses_image_tower
    stage1 = build("maple", backbone, seed=1, prompt_depth=3)
    with torch.no_grad():
        for p in stage1.parameters():
            p.copy_(random_like(p, 11))
    learner.load_initial_state(stage1.prompt_state())
    names = [n for n, _ in learner.named_parameters()]
    assert learner.stacked == names and "compound_prompt_projections.0.weight" in names
    with torch.no_grad():
        for p in learner.parameters():
            p.copy_(random_like(p, 12))
    # A MaPLe run with P': the stored tensors themselves (P shares their storage), or 2M - P with P frozen.
    parallel = build("maple", backbone, seed=2, prompt_depth=3)
    stored = {n: p.detach() for n, p in learner.named_parameters()}
    anchor = stage1.prompt_state() if frozen_stage1 else stored
    parallel.load_prompt_state({n: (stored[n] - 0.5 * anchor[n]) * 2 for n in names})
    learner.train()
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), parallel.text_features(), atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), parallel.image_features(images),
                                   atol=1e-5, rtol=0)
        aux = learner.aux_outputs()
        torch.testing.assert_close(aux["dpc_stage1_image_feats"], stage1.image_features(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(aux["dpc_stage1_text_feats"], stage1.text_features(), atol=1e-5, rtol=0)


def test_stacked_subset_leaves_the_other_tensors_as_they_are(backbone, images):
    learner = make_dpc(backbone, base={"name": "maple", "prompt_depth": 2}, stacked=["ctx"], weight=0.5)
    stage1 = build("maple", backbone, seed=1, prompt_depth=2)
    with torch.no_grad():
        for p in stage1.parameters():
            p.copy_(random_like(p, 13))
    learner.load_initial_state(stage1.prompt_state())
    with torch.no_grad():
        learner.proj.weight.add_(0.1)
        learner.ctx.add_(0.1)
        params = learner.effective_parameters()
    assert torch.equal(params["proj.weight"], learner.proj.weight)  # used as stored
    # (M - P/2) * 2 with P sharing M's storage: the stored tensor itself
    torch.testing.assert_close(params["ctx"], stage1.ctx.detach() + 0.1, atol=1e-6, rtol=0)


def test_dpc_refuses_what_it_cannot_wrap(backbone):
    with pytest.raises(UserError, match="instance-conditioned"):
        make_dpc(backbone, base={"name": "cocoop"})
    with pytest.raises(UserError, match="stacked names"):
        make_dpc(backbone, stacked=["meta_net."])
    with pytest.raises(ConfigError, match="learner.base.name"):
        make_dpc(backbone, base={"name": "nope"})
    with pytest.raises(ConfigError, match=r"learner\.base\.'depth'; valid keys here: ctx_init"):
        make_dpc(backbone, base={"name": "maple", "depth": 3})
    with pytest.raises(ValueError, match="weight"):
        DPCConfig(weight=0.0)
    with pytest.raises(ValueError, match="itself"):
        DPCConfig(base=LearnerConfig("dpc", DPCConfig()))


def test_stage1_state_of_another_learner_is_refused(backbone):
    learner = make_dpc(backbone)
    maple = build("maple", backbone, prompt_depth=2)
    with pytest.raises(UserError, match="unexpected keys"):
        learner.load_initial_state(maple.prompt_state())


def test_maple_dpc_loads_reference_whole_model_checkpoints(backbone):
    """MaPLe saves its whole `CustomCLIP` (`prompt_learner.*` plus frozen CLIP weights) for either stage."""
    learner = make_dpc(backbone, base={"name": "maple", "prompt_depth": 3})
    names = [n for n, _ in learner.named_parameters()]
    frozen = {"image_encoder.conv1.weight": torch.zeros(2), "logit_scale": torch.zeros(()),
              "prompt_learner.token_prefix": torch.zeros(3, 1, 64)}
    g = torch.Generator().manual_seed(0)
    shapes = {n: p.shape for n, p in learner.named_parameters()}
    stage1 = {n: torch.randn(shapes[n], generator=g) for n in names}
    stored = {n: torch.randn(shapes[n], generator=g) for n in names}
    learner.load_initial_state({"state_dict": {**{f"prompt_learner.{n}": t for n, t in stage1.items()}, **frozen}})
    learner.load_prompt_state({**{f"prompt_learner.{n}": t for n, t in stored.items()}, **frozen})
    state = learner.prompt_state()
    assert all(state[n].equal(stored[n]) and learner.stage1.get(n).equal(stage1[n]) for n in names)


def test_the_learner_provides_what_the_objective_reads():
    from tailprompt.objectives import OBJECTIVES, OPTIONAL_FIELDS

    assert OBJECTIVES.get("dpc").reads - OPTIONAL_FIELDS <= DPC.provides


def test_promptsrc_dpc_runs_promptsrc_with_the_recovered_prompts(backbone, images):
    options = {"prompt_depth_text": 3, "prompt_depth_vision": 3}
    learner = make_dpc(backbone, base={"name": "promptsrc", **options}, weight=0.2)
    assert learner.uses_image_tower and learner.base_name == "promptsrc"
    stage1 = build("promptsrc", backbone, seed=1, **options)
    with torch.no_grad():
        for p in stage1.parameters():
            p.copy_(random_like(p, 21))
    learner.load_initial_state(stage1.prompt_state())
    with torch.no_grad():
        for p in learner.parameters():
            p.copy_(random_like(p, 22))
    stored, before = learner.prompt_state(), stage1.prompt_state()
    assert set(stored) == set(before)
    parallel = build("promptsrc", backbone, seed=2, **options)
    parallel.load_prompt_state({n: (stored[n] - 0.8 * stored[n]) * (1 / 0.2) for n in stored})  # P shares M's storage
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), parallel.text_features(), atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), parallel.image_features(images),
                                   atol=1e-5, rtol=0)
        learner.set_classnames(OTHER_CLASSNAMES, TEMPLATE, seen=False)  # w_n = 0: the stage-1 model
        stage1.set_classnames(OTHER_CLASSNAMES, TEMPLATE)
        torch.testing.assert_close(learner.text_features(), stage1.text_features(), atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), stage1.image_features(images),
                                   atol=1e-5, rtol=0)


def test_base_options_reach_the_base_learner_fp16_rounding(backbone, images):
    base = {"name": "maple", "prompt_depth": 3, "round_prompts_fp16": True}
    learner = make_dpc(backbone, base=base)
    assert learner.config.round_prompts_fp16 and learner.dpc_config.base.name == "maple"
    stage1 = build("maple", backbone, seed=1, prompt_depth=3, round_prompts_fp16=True)
    with torch.no_grad():
        for p in stage1.parameters():
            p.copy_(random_like(p, 31))
    learner.load_initial_state(stage1.prompt_state())  # M = P: the stage-2 model starts as the stage-1 one
    with torch.no_grad():
        torch.testing.assert_close(learner.image_features(images), stage1.image_features(images), atol=1e-6, rtol=0)
        plain = make_dpc(backbone, base={**base, "round_prompts_fp16": False})
        plain.load_initial_state(stage1.prompt_state())
        assert not torch.equal(plain.image_features(images), learner.image_features(images))
