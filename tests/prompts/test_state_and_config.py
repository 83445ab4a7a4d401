"""Loading reference prompt state dicts, and the learners' config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tailprompt
from tailprompt.prompts import LEARNERS, PromptStateError
from tailprompt.prompts.coop import CoOpConfig
from tailprompt.prompts.maple import MaPLeConfig
from tailprompt.schema import ConfigError, from_dict, load_yaml

from .conftest import CLASSNAMES, build


def reference_coop_state(learner, dtype=torch.float16):
    """What the reference saves for CoOp's prompt learner: ctx plus the class-name buffers (fp16 CLIP)."""
    g = torch.Generator().manual_seed(1)
    k, w = len(CLASSNAMES), learner.ctx.shape[-1]
    return {
        "ctx": torch.randn(learner.ctx.shape, generator=g).to(dtype),
        "token_prefix": torch.randn(k, 1, w).to(dtype),
        "token_suffix": torch.randn(k, 72, w).to(dtype),
    }


def test_coop_loads_a_reference_prompt_learner_state(backbone):
    learner = build("coop", backbone)
    state = reference_coop_state(learner)
    learner.load_prompt_state(state)
    assert learner.ctx.dtype == torch.float32
    assert torch.equal(learner.ctx.detach(), state["ctx"].float())
    # the class-name buffers are the learner's own, never the checkpoint's
    assert learner.token_prefix.shape[1] == 1 and learner.token_suffix.shape[1] != 72


@pytest.mark.parametrize("wrap", ["prefixed", "dassl_checkpoint"])
def test_coop_accepts_prefixed_and_wrapped_states(backbone, wrap):
    learner = build("coop", backbone)
    state = reference_coop_state(learner)
    if wrap == "prefixed":
        payload = {f"prompt_learner.{k}": v for k, v in state.items()}
    else:
        payload = {"state_dict": state, "epoch": 200, "optimizer": {}}
    learner.load_prompt_state(payload)
    assert torch.equal(learner.ctx.detach(), state["ctx"].float())


def test_load_errors_name_missing_unexpected_and_mismatched_keys(backbone):
    learner = build("coop", backbone)
    before = learner.ctx.detach().clone()
    with pytest.raises(PromptStateError, match=r"missing keys \['ctx'\]"):
        learner.load_prompt_state({"token_prefix": torch.zeros(1)})
    with pytest.raises(PromptStateError, match=r"unexpected keys \['bias_vectors'\]"):
        learner.load_prompt_state({"ctx": torch.zeros(4, 64), "bias_vectors": torch.zeros(1, 64)})
    with pytest.raises(PromptStateError, match=r"ctx: checkpoint \[3, 4, 64\] vs learner \[4, 64\]"):
        learner.load_prompt_state({"ctx": torch.zeros(3, 4, 64)})
    assert torch.equal(learner.ctx.detach(), before)  # a failed load changes nothing
    with pytest.raises(PromptStateError, match="image_tower.weird"):
        learner.load_prompt_state(
            {"prompt_learner.ctx": torch.zeros(4, 64), "image_tower.weird": torch.zeros(1)}
        )


def test_kgcoop_accepts_the_reference_extras_it_never_trains(backbone):
    learner = build("kgcoop", backbone)
    state = {
        "ctx": torch.full((4, 64), 0.5),
        "bias_vectors": torch.zeros(1, 512),
        "meta_net.linear1.weight": torch.zeros(512, 512),
        "meta_net.linear1.bias": torch.zeros(512),
        "token_prefix": torch.zeros(3, 1, 64),
        "token_suffix": torch.zeros(3, 72, 64),
        "token_midfix": torch.zeros(1),
    }
    learner.load_prompt_state(state)
    assert torch.equal(learner.ctx.detach(), state["ctx"])


def test_cocoop_loads_reference_meta_net(backbone, images):
    learner = build("cocoop", backbone)
    state = {k: torch.randn(v.shape) for k, v in learner.prompt_state().items()}
    state["token_prefix"] = torch.zeros(1)
    learner.load_prompt_state(state)
    assert torch.equal(learner.meta_net.linear2.weight.detach(), state["meta_net.linear2.weight"])


def test_maple_loads_a_reference_whole_model_state(backbone):
    learner = build("maple", backbone, prompt_depth=3)
    own = {f"prompt_learner.{k}": torch.randn(v.shape) for k, v in learner.prompt_state().items()}
    frozen = {
        "image_encoder.conv1.weight": torch.zeros(2),
        "text_encoder.positional_embedding": torch.zeros(2),
        "logit_scale": torch.zeros(()),
        "prompt_learner.token_prefix": torch.zeros(3, 1, 64),
        "prompt_learner.token_suffix": torch.zeros(3, 72, 64),
    }
    learner.load_prompt_state({**own, **frozen})
    for k, v in learner.prompt_state().items():
        assert torch.equal(v, own[f"prompt_learner.{k}"])
    deeper = dict(own, **{"prompt_learner.compound_prompts_text.2": torch.zeros(2, 64)})
    with pytest.raises(PromptStateError, match=r"unexpected keys \['compound_prompts_text.2'\]"):
        learner.load_prompt_state(deeper)


def test_zeroshot_state_is_empty(backbone):
    learner = build("zeroshot", backbone)
    assert learner.prompt_state() == {}
    learner.load_prompt_state({})
    learner.load_prompt_state({"token_prefix": torch.zeros(1)})
    with pytest.raises(PromptStateError, match="unexpected keys"):
        learner.load_prompt_state({"ctx": torch.zeros(4, 64)})


def test_coop_config_rejects_what_the_reference_silently_reinterprets():
    with pytest.raises(ValueError, match="has 4 words"):
        CoOpConfig(n_ctx=16)
    with pytest.raises(ValueError, match="csc=true needs ctx_init=''"):
        CoOpConfig(csc=True)
    assert CoOpConfig(n_ctx=16, ctx_init="", csc=True).n_ctx == 16
    with pytest.raises(ConfigError, match="class_token_position"):
        from_dict(CoOpConfig, {"class_token_position": "left"}, "learner")
    with pytest.raises(ConfigError, match="unknown key learner.'nctx'"):
        from_dict(CoOpConfig, {"nctx": 4}, "learner")
    with pytest.raises(ConfigError, match="prompt_depth"):
        from_dict(MaPLeConfig, {"prompt_depth": 0}, "learner")


def test_reference_defaults():
    coop = LEARNERS.get("coop").config_cls()
    assert (coop.n_ctx, coop.ctx_init, coop.class_token_position, coop.csc) == (
        4,
        "a photo of a",
        "end",
        False,
    )
    maple = LEARNERS.get("maple").config_cls()
    assert (maple.n_ctx, maple.ctx_init, maple.prompt_depth) == (2, "a photo of a", 9)
    cocoop, kg = LEARNERS.get("cocoop").config_cls(), LEARNERS.get("kgcoop").config_cls()
    assert (cocoop.n_ctx, cocoop.ctx_init) == (kg.n_ctx, kg.ctx_init) == (4, "a photo of a")
    assert LEARNERS.get("maple").uses_image_tower and LEARNERS.get("cocoop").instance_conditioned
    assert not any(LEARNERS.get(n).uses_image_tower for n in ("coop", "kgcoop", "cocoop", "zeroshot"))


def test_packaged_presets_fit_the_learner_configs():
    methods = Path(tailprompt.__file__).parent / "configs" / "methods"
    presets = sorted(methods.glob("*.yaml"))
    if not presets:
        pytest.skip("no method presets packaged yet")
    for path in presets:
        learner = dict(load_yaml(path).get("learner") or {"name": "coop"})
        spec = LEARNERS.get(learner.pop("name"))
        from_dict(spec.config_cls, learner, f"{path.name}: learner")
