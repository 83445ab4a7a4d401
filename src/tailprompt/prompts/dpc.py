"""DPC: a parallel prompt tuned on top of a finished run's prompts, mixed per label space at inference.

Li et al., "DPC: Dual-Prompt Collaboration for Tuning Vision-Language Models" (CVPR 2025); reference
JREion/DPC `trainers/sple_coop.py` (its `PromptLearner` in stack mode and `load_model`), `train.py`
(`cfg.SPLE.*`). DPC is the second stage of a two-stage recipe: stage 1 trains a base learner (CoOp,
MaPLe, PromptSRC, ...) as usual and gives its prompts `P`; stage 2 (this learner, started with
`init.from_run: runs/<stage-1 id>`) keeps a frozen copy of `P` and trains a parallel prompt `P'`.

What is stored and trained, with `w_b = weight` and `w_n = weight_for_new`:

- The trainable parameter of every base prompt tensor is the mix `M = w_b P' + (1 - w_b) P`, under the
  base learner's own (reference) names, e.g. `ctx` for CoOp. With `init_from_stage1` (the reference's
  `SPLE_INIT`, default) it starts at `M = P`; otherwise at `w_b * fresh + (1 - w_b) * P` with `fresh` the
  base learner's own initialisation.
- `mode: converse` (the reference's stage-2 configs): the forward pass recovers
  `P' = (M - (1 - w_b) P) / w_b` and runs the base learner with it, so gradients reach `M` through `P'`.
  The reference's forward does this at evaluation too, so on the trained label space (`seen=True`) the
  prompts are `P'`. On other label spaces (`seen=False`: new classes, other datasets) its `load_model`
  first replaces the stored tensor by `w_n M + (1 - w_n) P` and the same forward then gives
  `(w_n M + (1 - w_n) P - (1 - w_b) P) / w_b` (`P` itself when `w_n = 0`, the CoOp config).
- `mode: simple` (the reference's other stack mode): the forward pass uses `M` as it is; on other label
  spaces the stored tensor becomes `w_n P' + (1 - w_n) P` with `P'` recovered from `M`. These are the
  mixing rules the paper describes.

`stacked` selects which of the base learner's prompt tensors get the dual-prompt treatment (names or
prefixes ending in "."); `None` (default) means all of them. The reference's CoOp variant stacks its only
tensor, `ctx`; its PromptKD variant mixes every prompt at initialisation but recovers `P'` for `ctx`
only, which `stacked: [ctx]` reproduces. Tensors left out train directly from their stage-1 values.

The learner also exposes the frozen stage-1 model for the hard-negative objective `dpc` through
`aux_outputs()`: `dpc_stage1_text_feats` (`[K, D]`, the stage-1 prompts on the current label space)
and, when the base learner prompts the image tower, `dpc_stage1_image_feats` (`[B, D]`, the stage-1
image features of the last `image_features` batch).

`prompt_state()` holds `M` under the base learner's names plus the frozen `P` under `stage1.<name>`, so a
run folder evaluates on its own; `load_prompt_state` also takes the reference's stage-2 state dict
(`ctx` only, keeping the stage-1 prompts already loaded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tailprompt.engine.config import LearnerConfig
from tailprompt.prompts.common import LearnerError, PromptStateError
from tailprompt.prompts.learner import LEARNERS, PromptLearner, build_learner

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

DPCMode = Literal["converse", "simple"]
STAGE1_PREFIX = "stage1."
STAGE1_TEXT = "dpc_stage1_text_feats"
STAGE1_IMAGE = "dpc_stage1_image_feats"


@dataclass
class DPCConfig:
    """DPC stage-2 settings; defaults are the reference's CoOp+DPC config (`SPLE/CoOp/vit_b16_ep10_lr35`)."""

    base: LearnerConfig = field(default_factory=LearnerConfig)  # the stage-1 learner: {name: coop, <options>}
    weight: float = 0.5  # w_b (cfg.SPLE.STACK.WEIGHT): share of the parallel prompt in the stored mix
    weight_for_new: float = 0.0  # w_n (STACK.WEIGHT_FOR_NEW; train.py's default is 0.2)
    mode: DPCMode = "converse"  # STACK.MODE
    init_from_stage1: bool = True  # SPLE_INIT: the parallel prompt starts as the stage-1 prompt
    stacked: list[str] | None = None  # prompt tensors that get a parallel copy; None = all

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"weight: expected a value in (0, 1] (P' is recovered by dividing by it), "
                             f"got {self.weight}")
        if not 0.0 <= self.weight_for_new <= 1.0:
            raise ValueError(f"weight_for_new: expected a value in [0, 1], got {self.weight_for_new}")
        if self.base.name == "dpc":
            raise ValueError("base: dpc cannot wrap itself; name the stage-1 learner (coop, maple, ...)")


def dual_prompt(
    stored: Tensor, stage1: Tensor, weight: float, weight_for_new: float, mode: DPCMode, seen: bool
) -> Tensor:
    """The prompt tensor the base learner runs with, from the stored mix `M` and the frozen stage-1 `P`.

    Operation order follows the reference (`(ctx - (1 - w) * P) * (1 / w)`), so fp32 results are equal.
    """
    if mode == "converse":
        mixed = stored if seen else weight_for_new * stored + (1 - weight_for_new) * stage1
        return (mixed - (1 - weight) * stage1) * (1 / weight)
    if seen:
        return stored
    parallel = (stored - (1 - weight) * stage1) * (1 / weight)
    return weight_for_new * parallel + (1 - weight_for_new) * stage1


def initial_mix(fresh: Tensor, stage1: Tensor, weight: float, from_stage1: bool) -> Tensor:
    """`M` at the start of stage 2: `P` (SPLE_INIT), else `w * fresh + (1 - w) * P`."""
    if from_stage1:
        return stage1.clone()
    return weight * fresh + (1 - weight) * stage1


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)


class _Invoke(nn.Module):
    """Calls one method of a learner, so `functional_call` can run it with substituted parameters."""

    def __init__(self, learner: nn.Module) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.learner, method)(*args)


class _Holder:
    """Keeps a module out of the owner's module tree (no duplicate parameters, no deep copy)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict[int, Any]) -> _Holder:
        return self


class _TensorStore(nn.Module):
    """Non-persistent buffers under dotted parameter names (dots escaped), moved with the learner."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(self._key(name), t.detach().clone(), persistent=False)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def get(self, name: str) -> Tensor:
        return getattr(self, self._key(name))

    def set(self, name: str, value: Tensor) -> None:
        buf = self.get(name)
        buf.copy_(value.to(dtype=buf.dtype, device=buf.device))

    def tensors(self) -> dict[str, Tensor]:
        return {n: self.get(n) for n in self.names}


class DPC(PromptLearner):
    """DPC stage-2 wrapper around any learner with class prompts shared by all images (CoOp, KgCoOp,
    MaPLe, PromptSRC); `uses_image_tower` follows the wrapped learner."""

    name = "dpc"
    config_cls = DPCConfig
    provides: ClassVar[frozenset[str]] = frozenset({STAGE1_TEXT, STAGE1_IMAGE})

    def __init__(self, config: DPCConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        base = build_learner(config.base.name, config.base.options, backbone, classnames, template)
        if base.instance_conditioned:
            raise LearnerError(
                f"dpc: base learner {base.name!r} is instance-conditioned (one prompt per image); DPC needs "
                "class prompts shared by all images (coop, kgcoop, maple, promptsrc)"
            )
        self.base = base
        self.uses_image_tower = base.uses_image_tower  # an instance fact: it depends on the wrapped learner
        self.ignored_reference_keys = base.ignored_reference_keys
        trainable = self._trainable()
        self.stacked = [n for n in trainable if config.stacked is None or _matches(n, config.stacked)]
        if config.stacked is not None:
            unknown = [p for p in config.stacked if not any(_matches(n, [p]) for n in trainable)]
            if unknown:
                raise LearnerError(
                    f"dpc: stacked names {unknown} match no prompt tensor of {base.name!r}; "
                    f"its tensors: {', '.join(trainable)}"
                )
        # Until a stage-1 state is loaded, P is the base learner's own initialisation (then P' = P).
        self.stage1 = _TensorStore(trainable)
        self.fresh = None if config.init_from_stage1 else _TensorStore(trainable)
        self.stage1_loaded = False
        self.seen = True
        self.classnames = list(classnames)
        self._invoke = _Holder(_Invoke(base))
        self._stage1_text: Tensor | None = None
        self._last_images: Tensor | None = None

    @property
    def base_name(self) -> str:
        """The wrapped learner's name: `init.from_run` must point at a run of that learner."""
        return self.base.name

    # --- label spaces -------------------------------------------------------------------------------

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Move to a label space; `seen=False` (new classes, other datasets) switches to the new-class mix."""
        self.base.set_classnames(classnames, template, seen)
        self.classnames = list(classnames)
        self.seen = seen
        self._stage1_text = None

    # --- parameters ---------------------------------------------------------------------------------

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.base.named_parameters() if p.requires_grad}

    def effective_parameters(self) -> dict[str, Tensor]:
        """The prompt tensors the base learner runs with on the current label space (differentiable in `M`)."""
        w, wn, mode = self.config.weight, self.config.weight_for_new, self.config.mode
        return {
            n: dual_prompt(p, self.stage1.get(n), w, wn, mode, self.seen) if n in self.stacked else p
            for n, p in self._trainable().items()
        }

    def _run(self, params: Mapping[str, Tensor], method: str, *args: Any) -> Tensor:
        invoke = self._invoke.module
        return functional_call(invoke, {f"learner.{n}": t for n, t in params.items()}, (method, *args))

    # --- features -----------------------------------------------------------------------------------

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class text features `[K, D]` of the base learner run with the dual prompts."""
        return self._run(self.effective_parameters(), "text_features", None)

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised image features `[B, D]` of the base learner run with the dual prompts."""
        if self.uses_image_tower and self.training:
            self._last_images = images  # the stage-1 features of the step's batch are made on demand
        return self._run(self.effective_parameters(), "image_features", images)

    def stage1_text_features(self) -> Tensor:
        """`[K, D]` text features of the frozen stage-1 prompts on the current label space (cached)."""
        if self._stage1_text is None:
            with torch.no_grad():
                self._stage1_text = self._run(self.stage1.tensors(), "text_features", None).float()
        return self._stage1_text

    def aux_outputs(self) -> dict[str, Tensor]:
        """The frozen stage-1 model's features for the hard-negative objective `dpc`.

        Raises:
            LearnerError: no stage-1 prompts were loaded (training started without `init.from_run`).
        """
        if not self.stage1_loaded:
            raise LearnerError(
                f"dpc: stage 2 starts from a finished {self.base.name} run: set init.from_run=runs/<id> "
                f"(a run of learner {self.base.name!r} on the same backbone and dataset)"
            )
        out = {STAGE1_TEXT: self.stage1_text_features()}
        if self._last_images is not None:
            # The engine asks right after the step's forward pass, so these are the batch's images.
            with torch.no_grad():
                out[STAGE1_IMAGE] = self._run(self.stage1.tensors(), "image_features", self._last_images).float()
        return out

    # --- state ----------------------------------------------------------------------------------------

    def prompt_state(self) -> dict[str, Tensor]:
        """`M` under the base learner's names, and the frozen `P` under `stage1.<name>`."""
        state = {n: p.detach().clone() for n, p in self._trainable().items()}
        state.update({STAGE1_PREFIX + n: t.detach().clone() for n, t in self.stage1.tensors().items()})
        return state

    def load_prompt_state(self, state_dict: Mapping[str, Any]) -> None:
        """Load `M` (+ optionally `stage1.*`): our `prompt_state`, or the reference's stage-2 state dict.

        The reference's stage-2 checkpoint holds `M` only (it reloads `P` from the stage-1 run): load the
        stage-1 state first with `load_initial_state`.
        """
        items = dict(state_dict.get("state_dict", state_dict)) if isinstance(state_dict, Mapping) else {}
        stage1 = {k.removeprefix(STAGE1_PREFIX): v for k, v in items.items() if k.startswith(STAGE1_PREFIX)}
        mixed = {k: v for k, v in items.items() if not k.startswith(STAGE1_PREFIX)}
        if stage1:
            names = set(self.stage1.names)
            if set(stage1) != names:
                raise PromptStateError(
                    f"dpc: load_prompt_state: stage-1 keys {sorted(stage1)} do not match the base learner's "
                    f"prompt tensors {sorted(names)}"
                )
            self._set_stage1(stage1)
        self.base.load_prompt_state(mixed)

    def load_initial_state(self, state_dict: Mapping[str, Any]) -> None:
        """Start stage 2 from a finished stage-1 run's (or the reference's) base-learner prompt state."""
        self.base.load_prompt_state(state_dict)
        stage1 = {n: p.detach().clone() for n, p in self._trainable().items()}
        self._set_stage1(stage1)
        with torch.no_grad():
            for n, p in self._trainable().items():
                if n in self.stacked:
                    fresh = self.fresh.get(n) if self.fresh is not None else p
                    p.copy_(initial_mix(fresh, stage1[n], self.config.weight, self.config.init_from_stage1))

    def _set_stage1(self, tensors: Mapping[str, Tensor]) -> None:
        for n, t in tensors.items():
            self.stage1.set(n, torch.as_tensor(t))
        self.stage1_loaded = True
        self._stage1_text = None

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"base={c.base['name']}, weight={c.weight}, weight_for_new={c.weight_for_new}, mode={c.mode}, "
            f"stacked={self.stacked}, seen={self.seen}"
        )


LEARNERS.register("dpc", DPC)

__all__ = ["DPC", "DPCConfig", "dual_prompt", "initial_mix"]
