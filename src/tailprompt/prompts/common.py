"""Pieces every prompt learner shares: class-name buffers, context init, prompt assembly, state loading.

The reference implementations (KaiyangZhou/CoOp `trainers/coop.py`, `trainers/cocoop.py`, htyao89/KgCoOp,
muzairkhattak/multimodal-prompt-learning `trainers/maple.py`) all build a class prompt the same way:
tokenise `"<prefix> <classname>."` where `<prefix>` is the init text or `"X X ... X"`, embed it with the
token embedding, keep position 0 (SOS) as `token_prefix` and positions `1 + n_ctx ...` (class tokens,
".", EOS, padding) as `token_suffix`, and put the learnable context at positions `1 .. n_ctx`.

The learner base class and registry are in `prompts/learner.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tailprompt.data.templates import is_template
from tailprompt.errors import UserError
from tailprompt.tensors import unit

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

# The rest of a reference whole-model checkpoint (MaPLe saves `CustomCLIP.state_dict()`): frozen CLIP
# weights, never prompt parameters.
_REFERENCE_FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale")
# Class-name buffers the reference saves and deletes again in `load_model` (KgCoOp also has a midfix).
REFERENCE_BUFFER_KEYS = ("token_prefix", "token_suffix", "token_midfix")


class LearnerError(UserError, ValueError):
    """A learner cannot be built or moved as asked; the message names the setting and what was expected.

    A `UserError`, so CLI commands print it as one line.
    """


class PromptStateError(LearnerError):
    """A prompt state dict does not fit the learner; the message lists the offending keys and shapes."""


def clean_classnames(classnames: Sequence[str]) -> list[str]:
    """Class names as the references write them into prompts (`_` -> space)."""
    return [name.replace("_", " ") for name in classnames]


def backbone_dtype(backbone: FrozenVLM) -> torch.dtype:
    return getattr(backbone, "dtype", torch.float32)


def random_context(shape: tuple[int, ...], device: torch.device | str | None) -> Tensor:
    """Context vectors drawn from N(0, 0.02^2) with the global CPU RNG, as the references do.

    Drawn on the CPU and then moved, so a seed gives the reference's numbers on any device.
    """
    vectors = torch.empty(shape, dtype=torch.float32)
    nn.init.normal_(vectors, std=0.02)
    return vectors.to(device)


def word_context(backbone: FrozenVLM, text: str, n_ctx: int) -> Tensor:
    """Token embeddings at positions `1 .. n_ctx` of `tokenize(text)` -> `[n_ctx, W]` (fp32).

    Raises:
        ValueError: `text` has fewer than `n_ctx` BPE tokens (the reference would then copy the EOS
            and padding embeddings into the context).
    """
    tokens = backbone.tokenize([text])
    n_tokens = int(backbone.eot_positions(tokens)[0]) - 1
    if n_tokens < n_ctx:
        raise LearnerError(
            f"ctx_init {text!r} has {n_tokens} tokens, fewer than n_ctx={n_ctx}; use a longer init "
            "text, a smaller n_ctx or ctx_init='' for random contexts"
        )
    with torch.no_grad():
        embedding = backbone.embed_tokens(tokens)
    return embedding[0, 1 : 1 + n_ctx].detach().float().clone()


def initial_context(
    backbone: FrozenVLM, n_ctx: int, ctx_init: str, num_classes: int | None = None
) -> tuple[int, str, Tensor]:
    """CoOp's context initialisation -> (n_ctx, prompt prefix text, ctx).

    With `ctx_init` the reference overwrites `n_ctx` by its word count and copies those token embeddings;
    otherwise `n_ctx` vectors from N(0, 0.02) (`[num_classes, n_ctx, W]` for class-specific contexts) and
    the prefix "X X ... X".
    """
    if ctx_init:
        init = ctx_init.replace("_", " ")
        n_words = count_words(init)
        return n_words, init, word_context(backbone, init, n_words)
    shape = (n_ctx, backbone.text_width) if num_classes is None else (num_classes, n_ctx, backbone.text_width)
    return n_ctx, " ".join(["X"] * n_ctx), random_context(shape, backbone.device)


def count_words(text: str) -> int:
    """Number of words as the CoOp reference counts them for `n_ctx` (`len(text.split(" "))`)."""
    return len(text.replace("_", " ").split(" "))


@dataclass
class ClassPrompts:
    """Fixed token embeddings of one label space, cut to the longest prompt.

    Shapes: K classes, L = max(eot) + 1 tokens (the reference keeps all `context_length` tokens; the
    tail after the last EOS never reaches an EOS feature in a causal tower), W = text width.
    """

    tokens: Tensor  # [K, L] token ids of "<prefix> <name>." (the reference's tokenized_prompts, cut)
    eot: Tensor  # [K] position of the EOS token
    prefix: Tensor  # [K, 1, W] SOS embedding (the reference's token_prefix)
    suffix: Tensor  # [K, L - 1 - n_ctx, W] class tokens, ".", EOS, padding (token_suffix, cut)
    name_lens: list[int]  # BPE tokens of each class name (for middle/front class-token positions)


def class_prompts(backbone: FrozenVLM, classnames: Sequence[str], prefix_text: str, n_ctx: int) -> ClassPrompts:
    """Tokenise and embed `"<prefix_text> <name>."` for every class (the references' prompt buffers).

    Args:
        backbone: a `FrozenVLM`.
        classnames: K class names (`_` is replaced by a space, as in the reference).
        prefix_text: the init text or `"X X ... X"`; its first `n_ctx` tokens are replaced by the
            learned context.
        n_ctx: number of context positions after SOS.
    """
    if not classnames:
        raise LearnerError("a prompt learner needs at least one class name")
    names = clean_classnames(classnames)
    # Out-of-vocabulary warnings come from the class names alone: the "X" placeholders of the full
    # prompts are replaced by the context, and the init words warned when the context was built.
    name_lens = (backbone.eot_positions(backbone.tokenize(names)) - 1).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokens = backbone.tokenize([f"{prefix_text} {name}." for name in names])
    eot = backbone.eot_positions(tokens).cpu()
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    with torch.no_grad():
        embedding = backbone.embed_tokens(tokens).detach().float()
    return ClassPrompts(
        tokens=tokens,
        eot=eot.to(torch.long),
        prefix=embedding[:, :1].clone(),
        suffix=embedding[:, 1 + n_ctx :].clone(),
        name_lens=[int(n) for n in name_lens],
    )


def install_class_prompts(module: nn.Module, prompts: ClassPrompts) -> None:
    """Set a learner's class-name buffers (non-persistent: `state_dict()` stays prompts-only).

    `eot` stays a CPU tensor so cutting the sequence length never waits on the accelerator.
    """
    device = next(module.parameters()).device
    module.register_buffer("token_prefix", prompts.prefix.to(device), persistent=False)
    module.register_buffer("token_suffix", prompts.suffix.to(device), persistent=False)
    module.register_buffer("tokenized_prompts", prompts.tokens.to(device), persistent=False)
    module.eot = prompts.eot
    module.name_lens = prompts.name_lens


def class_token_order(n_ctx: int, name_lens: Sequence[int], length: int, position: str) -> Tensor:
    """Per-class permutation of the "end" layout `[SOS][ctx][name][. EOS pad]` -> `[K, L]` indices.

    `end` keeps it; `middle` gives `[SOS][ctx[:M//2]][name][ctx[M//2:]][. EOS ...]`; `front` gives
    `[SOS][name][ctx][. EOS ...]` (CoOp `PromptLearner.forward`, with `name_lens` from the BPE tokenizer).
    """
    rows = []
    for n in name_lens:
        sos, ctx = [0], list(range(1, 1 + n_ctx))
        name, rest = list(range(1 + n_ctx, 1 + n_ctx + n)), list(range(1 + n_ctx + n, length))
        if position == "end":
            order = sos + ctx + name + rest
        elif position == "middle":
            half = n_ctx // 2
            order = sos + ctx[:half] + name + ctx[half:] + rest
        elif position == "front":
            order = sos + name + ctx + rest
        else:
            raise ValueError(f"class_token_position: expected end, middle or front, got {position!r}")
        rows.append(order)
    return torch.tensor(rows, dtype=torch.long)


def assemble_prompts(prefix: Tensor, ctx: Tensor, suffix: Tensor, order: Tensor | None = None) -> Tensor:
    """`[SOS][ctx][suffix]` per class, optionally permuted to the middle/front layout.

    Args:
        prefix: `[K, 1, W]`.
        ctx: `[M, W]` (shared), `[K, M, W]` (class-specific) or `[..., K, M, W]`.
        suffix: `[K, S, W]`.
        order: `[K, L]` from `class_token_order`, or None for the end layout.

    Returns:
        `[..., K, L, W]` prompt embeddings with L = 1 + M + S.
    """
    k, w = prefix.shape[0], prefix.shape[-1]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(k, -1, -1)
    lead = ctx.shape[:-3]
    prompts = torch.cat(
        [prefix.expand(*lead, *prefix.shape), ctx, suffix.expand(*lead, *suffix.shape)], dim=-2
    )
    if order is None:
        return prompts
    index = order.to(prompts.device).unsqueeze(-1).expand(*lead, k, order.shape[1], w)
    return torch.gather(prompts, -2, index)


def image_chunks(n_images: int, n_classes: int, max_sequences: int) -> list[slice]:
    """Consecutive slices of `n_images` so that each holds at most `max_sequences` image x class prompts
    (at least one image per slice; `max_sequences=0` means one slice for everything)."""
    step = n_images if max_sequences == 0 else max(1, max_sequences // max(1, n_classes))
    return [slice(start, start + step) for start in range(0, n_images, max(1, step))]


def template_text_features(backbone: FrozenVLM, classnames: list[str], templates: list[str],
                           clean: bool = True) -> Tensor:
    """Mean of the normalised `encode_text(template.format(name))` over templates, renormalised -> `[K, D]`.

    With one template this is the plain normalised feature (ZeroshotCLIP). `clean`: class names have `_`
    written as spaces (`clean_classnames`); sentences (class descriptions) are encoded as written.
    """
    names = clean_classnames(classnames) if clean else list(classnames)
    with torch.no_grad():
        per_template = []
        for template in templates:
            tokens = backbone.tokenize([template.format(n) for n in names]).to(backbone.device)
            per_template.append(unit(backbone.encode_text(tokens)))
        if len(per_template) == 1:
            return per_template[0]
        total = per_template[0]
        for feats in per_template[1:]:  # sequential sum, in the reference's order
            total = total + feats
        return unit(total / len(per_template))


def encode_prompt_embeddings(
    backbone: FrozenVLM,
    prompts: Tensor,
    eot: Tensor,
    deep_prompts: Sequence[Tensor] | None = None,
    shared_prefix: int = 0,
) -> Tensor:
    """Run prompt embeddings `[N, L, W]` (or `[G, K, L, W]`) through the frozen text tower -> normalised
    `[N, D]` (or `[G, K, D]`), fp32.

    Prompts live in fp32; they are cast to the backbone's dtype on the way in, so an fp16/bf16 tower
    gets its own dtype and gradients still flow back to the fp32 parameters.

    `shared_prefix` = P > 0 says positions `0 .. P-1` (`[SOS][context]`) are the same for every class
    (within each group of `[G, K, L, W]`): the tower then runs them once instead of once per class
    (`FrozenVLM.encode_text_from_embeddings`; exact, and it falls back where it cannot apply).
    """
    dtype = backbone_dtype(backbone)
    deep = None if deep_prompts is None else [p.to(dtype) for p in deep_prompts]
    out = backbone.encode_text_from_embeddings(prompts.to(dtype), eot, deep, shared_prefix=shared_prefix)
    return unit(out)


def shared_context_prefix(n_ctx: int, class_token_position: str = "end", csc: bool = False) -> int:
    """Positions `[SOS][ctx_1 .. ctx_M]` shared by all classes: `1 + n_ctx` when one context precedes every
    class name, else 0 (middle/front class positions or class-specific contexts differ per class)."""
    return 1 + n_ctx if class_token_position == "end" and not csc else 0


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def reference_prompt_state(
    state_dict: Mapping[str, Any], ignore: Iterable[str] = ()
) -> dict[str, Tensor]:
    """Normalise a reference checkpoint to the prompt learner's own key names.

    Accepts a Dassl checkpoint (`{"state_dict": ..., "epoch": ...}`), a prompt-learner state dict, or a
    whole-model state dict whose prompt parameters carry the `prompt_learner.` prefix (MaPLe saves
    the whole `CustomCLIP`; its frozen CLIP weights are dropped). Drops `token_prefix`/`token_suffix`
    as the reference's `load_model` does, plus any key in `ignore` (exact names, or prefixes ending
    in ".").
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    keys = list(state_dict)
    odd = [k for k in keys if not isinstance(k, str)]
    if odd:
        raise PromptStateError(f"state dict keys must be parameter names (strings), got {odd[:3]}")
    if any(k.startswith("prompt_learner.") for k in keys):
        stray = [k for k in keys if not k.startswith(("prompt_learner.", *_REFERENCE_FROZEN_PREFIXES))]
        if stray:
            raise PromptStateError(
                f"state dict mixes prompt_learner.* keys with unexpected keys {stray}; expected a "
                "prompt-learner state dict or a reference whole-model state dict"
            )
        prefix = "prompt_learner."
        items = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    else:
        items = dict(state_dict)
    drop = tuple(REFERENCE_BUFFER_KEYS) + tuple(ignore)
    return {k: v for k, v in items.items() if not _matches(k, drop)}


def load_prompt_state_into(
    module: nn.Module, state_dict: Mapping[str, Any], learner: str, ignore: Iterable[str] = ()
) -> None:
    """Copy a (reference or tailprompt) prompt state into `module`'s parameters, strictly.

    Args:
        module: the learner.
        state_dict: see `reference_prompt_state`.
        learner: learner name for error messages.
        ignore: reference keys that exist in the reference module but do not train there (KgCoOp's
            `bias_vectors`, `meta_net.`).

    Raises:
        PromptStateError: naming every missing key, unexpected key and shape mismatch.
    """
    state = reference_prompt_state(state_dict, ignore)
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    values = {k: _state_tensor(state[k], k, learner) for k in sorted(set(params) & set(state))}
    mismatched = [
        f"{k}: checkpoint {list(values[k].shape)} vs learner {list(params[k].shape)}"
        for k in values
        if tuple(values[k].shape) != tuple(params[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    if problems:
        raise PromptStateError(f"{learner}: load_prompt_state: " + ", ".join(problems))
    bad = [k for k, v in values.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise PromptStateError(f"{learner}: load_prompt_state: {', '.join(bad)} {'holds' if len(bad) == 1 else 'hold'} "
                               f"NaN or infinite values (a diverged or damaged checkpoint)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(values[name].to(dtype=param.dtype, device=param.device))


def _some(keys: list[str], shown: int = 8) -> str:
    """`keys` as a list, the first `shown` of a long one and how many there are (a whole CLIP state dict is not
    one readable line)."""
    return str(keys) if len(keys) <= shown else f"{keys[:shown]} and {len(keys) - shown} more"


def _state_tensor(value: Any, key: str, learner: str) -> Tensor:
    """A state dict entry as a floating-point tensor, or a `PromptStateError` naming the key."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise PromptStateError(f"{learner}: load_prompt_state: {key} is a {type(value).__name__}, expected a "
                               f"tensor") from None
    if not tensor.is_floating_point():
        raise PromptStateError(f"{learner}: load_prompt_state: {key} holds {str(tensor.dtype).removeprefix('torch.')} "
                               f"values, expected floating-point prompt parameters")
    return tensor


def check_template(template: str, learner: str) -> str:
    """A zero-shot template must hold one `{}` for the class name and no other format field (`is_template`)."""
    if not is_template(template):
        raise LearnerError(
            f"{learner}: template {template!r} must contain exactly one '{{}}' for the class name (and no other "
            f"braces)"
        )
    return template
