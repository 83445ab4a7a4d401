"""ProGrad's prompt learner: CoOp with its own context initialisation.

Zhu et al., "Prompt-aligned Gradient for Prompt Tuning" (ICCV 2023); reference
`BeierZhu/Prompt-align:ProGrad.public/trainers/prograd.py` (`PromptLearner`). The prompts, the text
tower and the class-token layouts are CoOp's; what differs is the start (`CTX_INIT: True`):

* the init words are the dataset's hand template with `" {}."` removed ("a photo of a {}." ->
  "a photo of a"), `_` -> space, counted by splitting on spaces (`W` words);
* the LAST `W` of the `n_ctx` (16) context vectors take the token embeddings at positions `1 .. W` of
  the tokenised words and the leading `n_ctx - W` vectors are **zero** (not N(0, 0.02));
* the prompt text is `"X ... X <words> <class>."`, so when the words have more BPE tokens than words
  (a comma: "a type of pet, a photo of a" is 8 words, 9 tokens) the extra trailing tokens stay as fixed
  tokens after the context, as in the reference.

The template is the dataset's (`data.templates` carries ProGrad's own per-dataset table in the preset).
On a new label space the prompt text follows that space's template, because the reference rebuilds the
learner with the target dataset's template and only loads `ctx`. The gradient projection is the
`prograd` objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.prompts.common import LearnerError, count_words, word_context
from tailprompt.prompts.coop import ClassTokenPosition, CoOp
from tailprompt.prompts.learner import LEARNERS

TEMPLATE_INIT = "template"  # ctx_init value: words of the dataset's template (the reference's CTX_INIT True)


@dataclass
class ProGradLearnerConfig:
    """ProGrad learner defaults (`ProGrad/rn50_ep100.yaml` + scripts: N_CTX 16, CTX_INIT True, end, CSC False).

    `ctx_init`: "template" = the dataset template's words in the last positions, zeros before them;
    other words = those words in the same layout; "" = 16 random N(0, 0.02) vectors (CoOp's).
    """

    n_ctx: int = 16
    ctx_init: str = TEMPLATE_INIT
    class_token_position: ClassTokenPosition = "end"
    csc: bool = False  # class-specific contexts (random init only, as the reference)

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx: expected >= 1, got {self.n_ctx}")
        if self.csc and self.ctx_init:
            raise ValueError("csc=true needs ctx_init='' (class-specific contexts start random in the reference)")
        if self.ctx_init and self.ctx_init != TEMPLATE_INIT and count_words(self.ctx_init) > self.n_ctx:
            raise ValueError(f"ctx_init {self.ctx_init!r} has more words than n_ctx={self.n_ctx}")


def template_init_words(template: str) -> str:
    """The reference's init words: the template without its trailing `" {}."`.

    Raises:
        LearnerError: the template does not end in `" {}."` (the reference would then put the
            literal "{}" and the rest of the template into the context).
    """
    if not template.endswith(" {}.") or template.count("{}") != 1:
        raise LearnerError(
            f"prograd: ctx_init=template needs a template ending in ' {{}}.' (ProGrad drops it to get the "
            f"init words), got {template!r}; set learner.ctx_init to words, or data.templates for this dataset"
        )
    return template[: -len(" {}.")].replace("_", " ")


class ProGradLearner(CoOp):
    """CoOp whose context starts as `[0 ... 0, template words]` (trainable parameter `ctx` `[16, W]`)."""

    name = "prograd"
    config_cls = ProGradLearnerConfig

    def initial_context(self, template: str, num_classes: int | None) -> tuple[int, str, Tensor]:
        n_ctx = self.config.n_ctx
        if not self.config.ctx_init:  # random N(0, 0.02) vectors behind "X ... X", as CoOp's
            return super().initial_context(template, num_classes)
        words = self.init_words(template)
        n_words = count_words(words)
        if n_words > n_ctx:
            raise LearnerError(f"prograd: n_ctx={n_ctx} is smaller than the {n_words} init words {words!r}")
        ctx = torch.zeros(n_ctx, self.backbone.text_width)
        ctx[n_ctx - n_words :] = word_context(self.backbone, words, n_words)
        return n_ctx, prompt_prefix(words, n_ctx), ctx

    def init_words(self, template: str) -> str:
        """The words the context started from: the template's (template init) or the configured ones."""
        init = self.config.ctx_init
        return template_init_words(template) if init == TEMPLATE_INIT else init.replace("_", " ")

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """New label space; with template init the prompt text follows that space's template."""
        if self.config.ctx_init == TEMPLATE_INIT:
            self.prompt_prefix = prompt_prefix(self.init_words(template), self.n_ctx)
        super().set_classnames(classnames, template, seen)


def prompt_prefix(words: str, n_ctx: int) -> str:
    """`"X ... X <words>"`: one X per context vector the words do not fill (their tokens replace them all)."""
    return " ".join(["X"] * (n_ctx - count_words(words)) + [words])


LEARNERS.register("prograd", ProGradLearner)

__all__ = ["ProGradLearner", "ProGradLearnerConfig", "template_init_words"]
