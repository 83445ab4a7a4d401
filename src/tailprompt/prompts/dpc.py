"""DPC: a parallel prompt tuned on top of a finished run's prompts, mixed per label space at inference.

Li et al., "DPC: Dual-Prompt Collaboration for Tuning Vision-Language Models" (CVPR 2025); reference
JREion/DPC `trainers/sple_coop.py` (its `PromptLearner` in stack mode and `load_model`), `train.py`
(`cfg.SPLE.*`). DPC is the second stage of a two-stage recipe: stage 1 trains a base learner (CoOp,
MaPLe, PromptSRC, ...) as usual and gives its prompts `P`; stage 2 (this learner, started from that run
by `init.from_run: runs/<id>` or `init.from_preset: <the stage-1 preset>`) keeps a frozen copy of `P` and
trains a parallel prompt `P'`.

What is stored and trained, with `w_b = weight` and `w_n = weight_for_new`:

- The trainable parameter of every base prompt tensor is stored under the base learner's own (reference)
  names, e.g. `ctx` for CoOp. With `init_from_stage1` (the reference's `SPLE_INIT`, default) it starts
  at `P`; otherwise at the mix `M = w_b * fresh + (1 - w_b) * P`, with `fresh` the base learner's own
  initialisation.
- `mode: converse` (the reference's stage-2 configs): the forward pass recovers the parallel prompt as
  `(stored - (1 - w_b) P) * (1 / w_b)` and runs the base learner with it.
  - With `init_from_stage1`, the reference's parameter wraps the stage-1 tensor itself
    (`nn.Parameter(self.pretuned_ctx)`: one storage), so its `P` takes every optimiser step and every
    loaded state with the parameter. The recovery then returns the stored tensor itself, `P'`, and only
    scales its gradient by `1 / w_b`; the reference's `load_model` says as much ("in converse mode the
    saved ctx is the stack prompt"). This is the default here: the `P` of the recovery is the stored
    tensor's value (`frozen_stage1: false`). `frozen_stage1: true` keeps `P` at the stage-1 values
    instead, as the paper describes it; the stored tensor is then the mix `M`.
  - Without `init_from_stage1` the reference's `P` is a tensor of its own, as with `frozen_stage1`.
  - On other label spaces (`seen=False`: new classes, other datasets) the reference's `load_model` first
    replaces the stored tensor by `w_n stored + (1 - w_n) P` (with the stage-1 `P`, read again from its
    file) and the same forward pass follows: `w_n P' + (1 - w_n) P` by default (`P` itself when
    `w_n = 0`, the CoOp config).
- `mode: simple` (the reference's other stack mode): the forward pass uses the stored `M` as it is; on
  other label spaces the stored tensor becomes `w_n P' + (1 - w_n) P` with `P' = (M - (1 - w_b) P) / w_b`.
  These are the mixing rules the paper describes.

`stacked` selects which of the base learner's prompt tensors get the dual-prompt treatment (names or
prefixes ending in "."); `None` (default) means all of them. The reference's CoOp variant stacks its only
tensor, `ctx`; its PromptKD variant mixes every prompt at initialisation but recovers `P'` for `ctx`
only, which `stacked: [ctx]` reproduces. Tensors left out train directly from their stage-1 values.

The learner also exposes the frozen stage-1 model for the hard-negative objective `dpc` through
`aux_outputs()`: `dpc_stage1_text_feats` (`[K, D]`, the stage-1 prompts on the current label space)
and, when the base learner prompts the image tower, `dpc_stage1_image_feats` (`[B, D]`, the stage-1
image features of the last `image_features` batch).

`prompt_state()` and `state_dict()` hold the stored tensors only, under the base learner's names, as the
reference's stage-2 checkpoint does; `P` is loaded with `load_initial_state` (the engine does it from `init.from_run`,
or from the run `init.from_preset` names; `tailprompt eval` reloads it the same way), as the reference
reloads its stage-1 checkpoint before the stage-2 one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tailprompt.engine.run_config import LearnerConfig
from tailprompt.prompts.common import LearnerError
from tailprompt.prompts.learner import LEARNERS, PromptLearner

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

DPCMode = Literal["converse", "simple"]
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
    # converse with init_from_stage1: keep P at the stage-1 values (the paper); false follows the reference,
    # whose P shares the trained parameter's storage (module docstring)
    frozen_stage1: bool = False
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
    stored: Tensor, stage1: Tensor, weight: float, weight_for_new: float, mode: DPCMode, seen: bool,
    shared_storage: bool = False,
) -> Tensor:
    """The prompt tensor the base learner runs with, from the stored tensor and the stage-1 `P`.

    `shared_storage`: the reference's converse recovery subtracts a `P` that holds the parameter's own
    values (module docstring): its value, without gradient, stands in for `P` there. Operation order
    follows the reference (`(ctx - (1 - w) * P) * (1 / w)`), so fp32 results are equal.
    """
    if mode == "converse":
        mixed = stored if seen else weight_for_new * stored + (1 - weight_for_new) * stage1
        anchor = mixed.detach() if shared_storage else stage1
        return (mixed - (1 - weight) * anchor) * (1 / weight)
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
    """DPC stage 2 on top of any learner whose class prompts are shared by all images.

    `DPC(config, ...)` builds an instance of `DPC` combined with the base learner's class (one subclass per
    base learner class), so the instance *is* that learner: its parameters, `state_dict()` and
    `prompt_state()` carry exactly the base's reference names (the stored mixes `M`), and every fact the
    engine reads (`uses_image_tower`, `ignored_reference_keys`) is the base's. The frozen stage-1 prompts
    live in non-persistent buffers (`stage1`). The base's methods run with the dual prompts substituted for
    its parameters through `torch.func.functional_call`.
    """

    name = "dpc"
    config_cls = DPCConfig
    provides: ClassVar[frozenset[str]] = frozenset({STAGE1_TEXT, STAGE1_IMAGE})
    needs_initial_state: ClassVar[bool] = True
    base_class: ClassVar[type[PromptLearner] | None] = None  # set on the per-base subclasses

    def __new__(cls, config: DPCConfig | None = None, *args: Any, **kwargs: Any) -> DPC:
        if cls.base_class is not None or config is None:  # already combined (or copy/pickle re-creating one)
            return super().__new__(cls)
        base_cls = LEARNERS.get(config.base.name)
        if base_cls.instance_conditioned:
            raise LearnerError(
                f"dpc: base learner {config.base.name!r} is instance-conditioned (one prompt per image); DPC "
                "needs class prompts shared by all images (coop, kgcoop, maple, promptsrc)"
            )
        return super().__new__(dpc_class(base_cls))

    def __init__(self, config: DPCConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        self.seen = True
        base_cls = type(self).base_class
        assert base_cls is not None
        base_cls.__init__(self, config.base.options, backbone, classnames, template)  # type: ignore[misc]
        self.dpc_config = config  # `self.config` stays the base learner's: its methods read it
        trainable = self._trainable()
        self.stacked = [n for n in trainable if config.stacked is None or _matches(n, config.stacked)]
        if config.stacked is not None:
            unknown = [p for p in config.stacked if not any(_matches(n, [p]) for n in trainable)]
            if unknown:
                raise LearnerError(
                    f"dpc: stacked names {unknown} match no prompt tensor of {base_cls.name!r}; "
                    f"its tensors: {', '.join(trainable)}"
                )
        # Until a stage-1 state is loaded, P is the base learner's own initialisation (then P' = P).
        self.stage1 = _TensorStore(trainable)
        self.fresh = None if config.init_from_stage1 else _TensorStore(trainable)
        self.stage1_loaded = False
        self._stage1_text: Tensor | None = None
        self._last_images: Tensor | None = None

    @classmethod
    def first_stage_learner(cls, config: DPCConfig) -> str:
        """Stage 2 starts from a run of the learner it wraps."""
        return config.base.name

    @property
    def base_name(self) -> str:
        """The wrapped learner's name: `init.from_run` must point at a run of that learner."""
        assert type(self).base_class is not None
        return type(self).base_class.name

    def forward(self, method: str, *args: Any) -> Any:
        """Run the base learner's `method`; `functional_call` wraps this to substitute its parameters."""
        return getattr(type(self).base_class, method)(self, *args)

    # --- label spaces -------------------------------------------------------------------------------

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Move to a label space; `seen=False` (new classes, other datasets) switches to the new-class mix."""
        type(self).base_class.set_classnames(self, classnames, template, seen)  # type: ignore[union-attr]
        self.seen = seen
        self._stage1_text = None

    # --- parameters ---------------------------------------------------------------------------------

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def effective_parameters(self) -> dict[str, Tensor]:
        """The prompt tensors the base learner runs with on the current label space (differentiable in the
        stored tensors)."""
        c = self.dpc_config
        shared = c.init_from_stage1 and not c.frozen_stage1
        return {
            n: dual_prompt(p, self.stage1.get(n), c.weight, c.weight_for_new, c.mode, self.seen, shared)
            if n in self.stacked else p
            for n, p in self._trainable().items()
        }

    def _run(self, params: Mapping[str, Tensor], method: str, *args: Any) -> Any:
        return functional_call(self, dict(params), (method, *args))

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
        """The frozen stage-1 model's features for the hard-negative objective `dpc`, plus the base's own.

        Raises:
            LearnerError: no stage-1 prompts were loaded (training started without `init.from_run`).
        """
        if not self.stage1_loaded:
            raise LearnerError(
                f"dpc: stage 2 starts from a finished {self.base_name} run: set init.from_run=runs/<id> "
                f"(a run of learner {self.base_name!r} on the same backbone and dataset)"
            )
        out = dict(self._run(self.effective_parameters(), "aux_outputs"))
        out[STAGE1_TEXT] = self.stage1_text_features()
        if self._last_images is not None:
            # The engine asks right after the step's forward pass, so these are the batch's images.
            with torch.no_grad():
                out[STAGE1_IMAGE] = self._run(self.stage1.tensors(), "image_features", self._last_images).float()
        return out

    # --- state ----------------------------------------------------------------------------------------

    def load_initial_state(self, state_dict: Mapping[str, Any]) -> None:
        """Start stage 2 from a finished stage-1 run's (or the reference's) base-learner prompt state."""
        self.load_prompt_state(state_dict)
        stage1 = self._trainable()
        for n, p in stage1.items():
            self.stage1.set(n, p.detach())
        with torch.no_grad():
            for n, p in stage1.items():
                if n in self.stacked:
                    fresh = self.fresh.get(n) if self.fresh is not None else p
                    p.copy_(initial_mix(fresh, self.stage1.get(n), self.dpc_config.weight,
                                        self.dpc_config.init_from_stage1))
        self.stage1_loaded = True
        self._stage1_text = None

    def extra_repr(self) -> str:
        c = self.dpc_config
        return (
            f"base={self.base_name}, weight={c.weight}, weight_for_new={c.weight_for_new}, mode={c.mode}, "
            f"stacked={self.stacked}, seen={self.seen}"
        )


@functools.cache
def dpc_class(base_cls: type[PromptLearner]) -> type[DPC]:
    """`DPC` combined with one base learner class (its methods after DPC's, its class facts kept)."""
    return type(f"DPC_{base_cls.__name__}", (DPC, base_cls), {
        "base_class": base_cls,
        "provides": DPC.provides | base_cls.provides,
        "__module__": __name__,
    })


LEARNERS.register("dpc", DPC)

__all__ = ["DPC", "DPCConfig", "dpc_class", "dual_prompt", "initial_mix"]
