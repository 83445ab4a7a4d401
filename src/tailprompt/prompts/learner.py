"""The prompt-learner contract: one base class, one registry, one factory.

A learner is an `nn.Module` whose only trainable parameters are its prompts. It is built from its config
dataclass, a `FrozenVLM`, the class names of the current label space and the dataset's zero-shot template.
Per step the engine calls

    image_feats = learner.image_features(images)        # only when the class says uses_image_tower
    text_feats  = learner.text_features(image_feats)    # [K, D], or [B, K, D] when instance_conditioned
    aux         = learner.aux_outputs()                  # extra tensors named in `provides`

with `image_feats` L2-normalised `[B, D]` (from the feature cache when the image tower is frozen).
`set_classnames` rebuilds the class-name buffers for a new label space (base -> new, cross-dataset) while
keeping the learned parameters, exactly as the reference implementations transfer prompts.

The backbone is held by reference, not registered as a submodule: `parameters()` and `state_dict()` of a
learner are its prompt parameters only, under the reference's names, and `learner.train()` never flips the
frozen backbone out of eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from tailprompt.prompts.common import load_prompt_state_into
from tailprompt.registry import Registry

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM


class SharedBackbone:
    """Holds a learner's frozen backbone by reference.

    Not an `nn.Module` attribute, so `parameters()`/`state_dict()` stay prompts-only and `.train()`
    does not reach the backbone; `copy.deepcopy(learner)` shares the backbone instead of copying it.
    """

    def __init__(self, backbone: FrozenVLM) -> None:
        self.backbone = backbone

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedBackbone:
        return self


class PromptLearner(nn.Module):
    """Base class of every prompt learner.

    Subclasses set the class-level facts below, build their parameters in `__init__` (after
    `super().__init__(config, backbone)`), and implement `set_classnames` and `text_features`.
    """

    name: ClassVar[str] = ""  # registry name, used in messages and by `load_prompt_state`
    config_cls: ClassVar[type] = object  # the learner's config dataclass
    uses_image_tower: ClassVar[bool] = False  # prompts the image tower: the engine passes images every step
    instance_conditioned: ClassVar[bool] = False  # text_features(image_feats) returns [B, K, D]
    # Keys of the reference's prompt learner that never train there (KgCoOp's `bias_vectors`): dropped on load.
    ignored_reference_keys: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[frozenset[str]] = frozenset()  # names `aux_outputs()` fills for objectives
    # A second stage (DPC): its own prompts mean nothing without the first stage's (`load_initial_state`).
    needs_initial_state: ClassVar[bool] = False

    def __init__(self, config: Any, backbone: FrozenVLM) -> None:
        super().__init__()
        self.config = config
        self._shared = SharedBackbone(backbone)
        self.classnames: list[str] = []

    @property
    def backbone(self) -> FrozenVLM:
        """The frozen `FrozenVLM` (shared, not a submodule)."""
        return self._shared.backbone

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Rebuild the class-name buffers for a new label space; learned parameters are kept.

        `seen` is False for a label space the prompts were not trained on (new classes, other datasets);
        learners that infer differently there (DPC's mixing weights) read it.
        """
        raise NotImplementedError

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class text features `[K, D]` (`[B, K, D]` for instance-conditioned learners)."""
        raise NotImplementedError

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised image features `[B, D]`; the frozen tower unless the learner prompts it."""
        return self.backbone.image_features(images)

    def aux_outputs(self) -> dict[str, Tensor]:
        """Extra per-step tensors for objectives, keyed by the names in `provides`."""
        return {}

    def prompt_state(self) -> dict[str, Tensor]:
        """Detached copies of the trainable prompt parameters under their (reference) names."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_prompt_state(self, state_dict: Mapping[str, Any]) -> None:
        """Load our `prompt_state` or a reference checkpoint's prompt-learner state, strictly."""
        load_prompt_state_into(self, state_dict, self.name, self.ignored_reference_keys)

    @classmethod
    def first_stage_learner(cls, config: Any) -> str:
        """The learner whose runs a run of this learner (with `config`) may start from: itself."""
        return cls.name

    @property
    def base_name(self) -> str:
        """The learner whose finished runs `init.from_run` may start from (itself; a wrapper's base)."""
        return self.name

    def load_initial_state(self, state_dict: Mapping[str, Any]) -> None:
        """Start training from another run's prompts (`init.from_run`); wrappers may keep a frozen copy."""
        self.load_prompt_state(state_dict)

    def extra_repr(self) -> str:
        return f"config={self.config!r}, classes={len(self.classnames)}"


LEARNERS: Registry[type[PromptLearner]] = Registry("learner")


def build_learner(
    name: str, config: Any, backbone: FrozenVLM, classnames: list[str], template: str
) -> PromptLearner:
    """The registered learner `name` built from its typed `config` for a label space, on the backbone's device."""
    cls = LEARNERS.get(name)
    return cls(config, backbone, list(classnames), template).to(backbone.device)
