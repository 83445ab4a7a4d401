"""`FrozenVLM`: the one adapter between prompt learners and an open_clip CLIP model.

Learners never touch open_clip modules directly: they read the towers' parts through the properties here
and run the towers through `encode_text_from_embeddings` and `encode_image_with_prompts`.

Deep prompts (MaPLe, Khattak et al. 2023, Sec. 3.2-3.3; the reference's ``ResidualAttentionBlock_MaPLe``):

- text: ``deep_prompts[i]`` (``[n, W]`` shared or ``[K, n, W]`` per sequence) replaces the hidden states at
  positions ``1..n`` (right after the start token) of the input of text block ``i + 1``. Block 0 sees the
  caller's embeddings, in which the shallow prompts already sit at positions ``1..n``.
- vision: ``prompts`` (``[n, Wv]`` or ``[B, n, Wv]``) are appended after the CLS and patch tokens, after the
  positional embedding and before ``ln_pre``; ``deep_prompts[i]`` (same shapes, same n) replaces those last n
  tokens of the input of vision block ``i + 1``. The prompt tokens are dropped before pooling.

In both towers blocks beyond ``len(deep_prompts) + 1`` just propagate what the previous block produced, so
``len(deep_prompts) <= layers - 1``; MaPLe's prompt depth J corresponds to ``len(deep_prompts) == J - 1``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailprompt.backbone.checkpoints import BackboneError
from tailprompt.backbone.precision import (
    ResolvedPrecision,
    autocast_context,
    fold_quick_gelu,
    store_matmul_weights,
)
from tailprompt.backbone.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    TrainPolicy,
    eval_transform,
    preprocess_id,
    train_transform,
)
from tailprompt.tensors import unit

_Method = TypeVar("_Method", bound=Callable[..., Tensor])


def _in_own_precision(method: _Method) -> _Method:
    """Run a tower method under the backbone's autocast (nested autocasts are no-ops) and return fp32.

    In bf16 the matrix weights are stored in bf16, so a caller that forgot the autocast would otherwise hit
    a dtype error; the fp32 result (exact: bf16 -> fp32 loses nothing) keeps the caller's arithmetic fp32.
    """

    @functools.wraps(method)
    def wrapper(self: FrozenVLM, *args: Any, **kwargs: Any) -> Tensor:
        with self.autocast():
            out = method(self, *args, **kwargs)
        return out if out.dtype == torch.float64 else out.float()

    return wrapper  # type: ignore[return-value]


class FrozenVLM(nn.Module):
    """A frozen CLIP model (eval mode, no trainable parameters) with the hooks prompt learners need.

    Attributes:
        identity: architecture + weights (``ViT-B-16@sha256:<hex>``, ``tiny-vit@random:0``), for cache keys.
        arch: the architecture name given to `load_backbone`.
        context_length: text positions L; image_size: input side S in pixels.
        embed_dim: joint embedding width D; text_width: text tower width W (CoOp's ctx_dim).
        vision_width: ViT width Wv, None for a convolutional image tower; has_vit: whether it is a ViT.
        logit_scale: the exp'd temperature (open_clip's ``logit_scale.exp()``, ~100 for trained CLIPs).
        vocabulary: words the model was pretrained on (embedded model) or None (no check).
        preprocess_train / preprocess_eval: PIL -> FloatTensor[3, S, S]; preprocess_id names both;
            `train_preprocess` gives another training augmentation.
        precision: ``fp32`` or ``bf16``, the autocast the towers run under (`autocast_context`). In bf16 the
            weights autocast would cast on every call (linear, convolution and attention projections, the
            towers' output projections) are stored in bf16 once (`store_matmul_weights`); norms and
            embeddings stay fp32. The outputs are bit-identical to autocast over fp32 weights, without the
            per-call weight copies, and the frozen model takes half the memory, except where QuickGELU MLPs
            are folded into SiLU ones (`fold_quick_gelu`, OpenAI CLIP): the same function, within bf16's
            rounding. Every tower method below enters this autocast itself and returns fp32.
        quick_gelu_folded: whether `fold_quick_gelu` rewrote the MLPs (bf16 only; part of the cache key).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: str,
        identity: str,
        embed_dim: int,
        vocabulary: set[str] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        precision: ResolvedPrecision = "fp32",
    ) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.identity = identity
        self.vocabulary = vocabulary
        self.precision: ResolvedPrecision = precision
        _check_text_tower(self._text_tower, arch)
        self.context_length = int(self.positional_embedding.shape[0])
        image_size = model.visual.image_size
        self.image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        self.embed_dim = int(embed_dim)
        self.text_width = int(self.token_embedding.embedding_dim)
        self.has_vit = _is_vit(model.visual)
        self.vision_width = int(model.visual.conv1.out_channels) if self.has_vit else None
        if self.has_vit and not model.visual.transformer.batch_first:
            raise BackboneError(f"architecture {arch!r}: image transformer is not batch-first")
        self.logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocess_train = train_transform(self.image_size, mean, std)
        self.preprocess_eval = eval_transform(self.image_size, mean, std)
        self.preprocess_id = preprocess_id(self.image_size, mean, std)
        self._norm_stats = (tuple(mean), tuple(std))
        self._bpe: Any = None  # open_clip SimpleTokenizer, built on first use (reading BPE merges is slow)
        for p in self.parameters():
            p.requires_grad_(False)
        self.quick_gelu_folded = False  # whether QuickGELU MLPs run as SiLU with folded weights (bf16 only)
        if precision == "bf16":
            store_matmul_weights(model, torch.bfloat16)  # a no-op where the loader stored them so
            self.quick_gelu_folded = fold_quick_gelu(model) > 0
        super().train(False)

    def train(self, mode: bool = True) -> FrozenVLM:
        # Always eval: a learner's .train() must not switch the conv tower's BatchNorm to batch statistics.
        return super().train(False)

    def train_preprocess(self, crop_scale: tuple[float, float], flip: bool, policy: TrainPolicy = "crop_flip") -> Any:
        """PIL -> FloatTensor[3, S, S]: `preprocess_train` with another crop scale range / flip / policy."""
        return train_transform(self.image_size, *self._norm_stats, crop_scale=crop_scale, flip=flip, policy=policy)

    # ----- tower parts (read-only views for learners) -----
    @property
    def _text_tower(self) -> nn.Module:
        # CustomTextCLIP keeps its text transformer under .text; CLIP flattens it onto the model.
        return self.model.text if hasattr(self.model, "text") else self.model

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._text_tower.token_embedding

    @property
    def positional_embedding(self) -> Tensor:
        """Text positional embedding ``[L, W]``."""
        return self._text_tower.positional_embedding

    @property
    def text_blocks(self) -> nn.ModuleList:
        """Text blocks; each maps ``[K, L, W]`` -> ``[K, L, W]`` (batch-first) given ``attn_mask``."""
        return self._text_tower.transformer.resblocks

    @property
    def attn_mask(self) -> Tensor:
        """Causal additive mask ``[L, L]`` (``-inf`` above the diagonal); slice ``[:n, :n]`` for n tokens."""
        return self._text_tower.attn_mask

    @property
    def ln_final(self) -> nn.Module:
        return self._text_tower.ln_final

    @property
    def text_projection(self) -> Tensor | nn.Module | None:
        """``[W, D]`` parameter (``x @ proj``), an ``nn.Linear`` for some open_clip configs, or None."""
        return self._text_tower.text_projection

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def conv1(self) -> nn.Conv2d:
        """ViT patch embedding: ``[B, 3, S, S]`` -> ``[B, Wv, S/p, S/p]``."""
        return self._vit().conv1

    @property
    def class_embedding(self) -> Tensor:
        """ViT class token ``[Wv]``."""
        return self._vit().class_embedding

    @property
    def vision_positional_embedding(self) -> Tensor:
        """ViT positional embedding ``[1 + (S/p)^2, Wv]``."""
        return self._vit().positional_embedding

    @property
    def ln_pre(self) -> nn.Module:
        return self._vit().ln_pre

    @property
    def vision_blocks(self) -> nn.ModuleList:
        return self._vit().transformer.resblocks

    @property
    def ln_post(self) -> nn.Module:
        return self._vit().ln_post

    @property
    def vision_projection(self) -> Tensor | None:
        """``[Wv, D]`` (``x @ proj``)."""
        return self._vit().proj

    @property
    def text_layers(self) -> int:
        return len(self.text_blocks)

    @property
    def vision_layers(self) -> int | None:
        return len(self.vision_blocks) if self.has_vit else None

    def _vit(self) -> nn.Module:
        if not self.has_vit:
            raise BackboneError(
                f"backbone {self.arch!r} has a convolutional image tower; vision prompts need a ViT "
                f"(e.g. embedded-vit, tiny-vit or ViT-B-16)"
            )
        return self.model.visual

    # ----- text -----
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """BPE-tokenize `texts` to ``LongTensor[N, L]``: start token, text, end-of-text token, zero padding.

        Raises:
            BackboneError: a text needs more than `context_length` tokens (never silently cut).
        """
        if isinstance(texts, str):
            texts = [texts]
        bpe = self._tokenizer()
        rows = []
        for text in texts:
            ids = [bpe.sot_token_id, *bpe.encode(text), bpe.eot_token_id]
            if len(ids) > self.context_length:
                raise BackboneError(
                    f"prompt {_shortened(text)!r} needs {len(ids)} tokens but backbone {self.arch!r} has a context of "
                    f"{self.context_length}; shorten the prompt (class name or template)"
                )
            rows.append(ids)
        if self.vocabulary is not None:
            self._warn_unknown_words(texts)
        out = torch.zeros(len(rows), self.context_length, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _tokenizer(self) -> Any:
        if self._bpe is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._bpe = SimpleTokenizer(context_length=self.context_length)
        return self._bpe

    def _warn_unknown_words(self, texts: Sequence[str]) -> None:
        assert self.vocabulary is not None
        words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
        unknown = sorted(words - self.vocabulary)
        if unknown:
            warnings.warn(
                f"backbone {self.arch!r} was pretrained on a closed vocabulary; these words are outside "
                f"it and carry no learned meaning: {', '.join(unknown[:20])}"
                + (" ..." if len(unknown) > 20 else ""),
                stacklevel=3,
            )

    @staticmethod
    def eot_positions(tokens: Tensor) -> Tensor:
        """End-of-text index per row, ``[N]``: the EOT token has the highest id (open_clip's argmax pool)."""
        return tokens.argmax(dim=-1)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings ``[N, L, W]`` (no positional embedding)."""
        return self.token_embedding(tokens.to(self.device))

    @_in_own_precision
    def encode_text(self, tokens: Tensor, *, truncate: bool = True) -> Tensor:
        """Text features ``[N, D]``, not normalised.

        Args:
            tokens: ``LongTensor[N, L]`` from `tokenize`.
            truncate: cut to the longest end-of-text position (identical result, faster); False runs
                open_clip's own full-context ``encode_text`` (the reference path).
        """
        tokens = tokens.to(self.device)
        if not truncate:
            return self.model.encode_text(tokens)
        return self.encode_text_from_embeddings(self.embed_tokens(tokens), self.eot_positions(tokens))

    @_in_own_precision
    def encode_text_from_embeddings(
        self,
        x: Tensor,
        eot: Tensor,
        deep_prompts: Sequence[Tensor] | None = None,
        *,
        truncate: bool = True,
        shared_prefix: int = 0,
    ) -> Tensor:
        """Run the text tower on token embeddings: the routine every learner calls (CoOp's TextEncoder).

        Adds the positional embedding, runs the blocks under the causal mask (inserting deep prompts, see the
        module docstring), applies ``ln_final``, takes the end-of-text token and projects. The sequence is
        first cut to ``max(eot) + 1`` positions: the tower is causal, so tokens after an end-of-text token
        never reach it and the result equals the full-context pass (pass `eot` on the CPU to avoid a device
        sync for the cut length).

        With ``shared_prefix = P > 0`` the caller promises that positions ``0 .. P-1`` are the same for all
        K sequences of a group (``[SOS][context]`` when the context precedes the class name and does not
        depend on the class). Causal attention then makes their hidden states the same too, so they are
        computed once per group and the K class-specific tails attend to them (prefix caching; exact up to
        float summation order). Falls back to the plain pass when it cannot apply (P beyond an end-of-text
        position, per-sequence deep prompts, deep prompts reaching past P, a block layout it does not know).

        Args:
            x: ``[K, L, W]`` token embeddings (learned context vectors already in place), or ``[G, K, L, W]``
                for G groups (CoCoOp: one group of K class prompts per image).
            eot: ``[K]`` end-of-text positions (shared by every group), or ``[G * K]``.
            deep_prompts: per-block text prompts, ``deep_prompts[i]`` ``[n, W]`` or ``[N, n, W]`` (N = all
                sequences) for block ``i + 1``.
            truncate: False keeps all L positions (the reference path, for tests and benchmarks).
            shared_prefix: P, the number of leading positions shared within each group (0: none).

        Returns:
            ``[K, D]`` (or ``[G, K, D]``) text features, not normalised.
        """
        grouped = x.dim() == 4
        groups, k = (x.shape[0], x.shape[1]) if grouped else (1, x.shape[0])
        eot = eot.long()
        deep = list(deep_prompts or [])
        _check_depth(deep, self.text_layers, "text")
        # every group must share one set of end-of-text positions (given once as [K], or repeated as [G * K])
        same_eot = eot.numel() == k or torch.equal(eot.reshape(groups, k), eot[:k].expand(groups, k))
        if shared_prefix > 0 and same_eot and self._prefix_applies(shared_prefix, eot, deep):
            xs = x if grouped else x.unsqueeze(0)
            feats = self._encode_with_shared_prefix(xs, eot[:k], deep, shared_prefix, truncate)
            return feats if grouped else feats[0]
        if grouped:
            x = x.reshape(groups * k, *x.shape[2:])
            if eot.numel() == k:
                eot = eot.repeat(groups)
        feats = self._encode_plain(x, eot, deep, truncate)
        return feats.reshape(groups, k, -1) if grouped else feats

    def _encode_plain(self, x: Tensor, eot: Tensor, deep: list[Tensor], truncate: bool) -> Tensor:
        """Every sequence through every block: ``[N, L, W]`` -> ``[N, D]``."""
        k, length, _ = x.shape
        if truncate:
            length = int(eot.max()) + 1
        eot = eot.to(x.device)
        x = x[:, :length] + self.positional_embedding[:length].to(x.dtype)
        mask = self.attn_mask[:length, :length]
        blocks = list(self.text_blocks)
        # Under autocast the last block computes the end-of-text rows alone (the only ones pooled).
        ends_only = torch.is_autocast_enabled(x.device.type) and _is_plain_block(blocks[-1])
        if ends_only and not deep and all(_is_plain_block(b) for b in blocks):
            rows = _PackedRows.of(eot, length, x.device)
            if rows.slots is not None:  # some sequences end early: run each only up to its end
                return self._project_text(self.ln_final(_packed_causal_pass(blocks, x, rows)))
        for i, block in enumerate(blocks):
            if 1 <= i <= len(deep):
                x = _replace_tokens(x, deep[i - 1], start=1)
            if ends_only and i == len(blocks) - 1:
                return self._project_text(self.ln_final(_end_rows_block(block, x, eot)))
            x = _run_block(block, x, mask)
        x = self.ln_final(x)
        x = x[torch.arange(k, device=x.device), eot]
        return self._project_text(x)

    def _prefix_applies(self, prefix: int, eot: Tensor, deep: list[Tensor]) -> bool:
        """Whether the shared-prefix pass is exact for these inputs (else the caller falls back)."""
        if prefix > int(eot.min()):  # every end-of-text token must lie in its sequence's own tail
            return False
        if any(p.dim() != 2 or 1 + p.shape[0] > prefix for p in deep):  # deep prompts must sit in the prefix
            return False
        return all(_is_plain_block(block) for block in self.text_blocks)

    def _encode_with_shared_prefix(
        self, x: Tensor, eot: Tensor, deep: list[Tensor], prefix: int, truncate: bool
    ) -> Tensor:
        """``[G, K, L, W]`` whose first `prefix` positions are equal within each group -> ``[G, K, D]``."""
        groups, k, length, _ = x.shape
        if truncate:
            length = int(eot.max()) + 1
        pos = self.positional_embedding[:length].to(x.dtype)
        tails = _PackedRows.of(eot - prefix, length - prefix, x.device)
        head = x[:, 0, :prefix] + pos[:prefix]  # [G, P, W]: the first sequence stands for its group
        tail = tails.pack(x[:, :, prefix:length] + pos[prefix:])  # [G, N, W]
        blocks = list(self.text_blocks)
        for i, block in enumerate(blocks[:-1]):
            if 1 <= i <= len(deep):
                head = _replace_tokens(head, deep[i - 1], start=1)
            head, tail = _prefix_block(block, head, tail, tails)
        if 1 <= len(blocks) - 1 <= len(deep):
            head = _replace_tokens(head, deep[len(blocks) - 2], start=1)
        # the last block computes the end-of-text rows alone, the only ones pooled
        rows = _prefix_end_rows(blocks[-1], head, tail, tails)  # [G, K, W]
        return self._project_text(self.ln_final(rows))

    def _project_text(self, x: Tensor) -> Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Module):
            return proj(x)
        return x @ proj

    # ----- image -----
    @_in_own_precision
    def encode_image(self, images: Tensor) -> Tensor:
        """Image features ``[B, D]`` of ``[B, 3, S, S]`` preprocessed images, not normalised (open_clip).

        Under autocast a ViT runs through `encode_image_with_prompts` (no prompts: the same function), whose
        blocks avoid the slow bf16 path of ``nn.MultiheadAttention`` on the CPU (`_run_block`).
        """
        images = images.to(self.device, self.dtype)
        if self.has_vit and torch.is_autocast_enabled(images.device.type):
            return self.encode_image_with_prompts(images)
        return self.model.encode_image(images)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast the towers run under: this backbone's precision on its device."""
        return autocast_context(self.device, self.precision)

    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalised fp32 ``[B, D]`` features of the frozen image tower under its precision, no graph."""
        with torch.no_grad(), self.autocast():
            return unit(self.encode_image(images))

    @_in_own_precision
    def encode_image_with_prompts(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Run the ViT image tower with appended visual prompts (MaPLe's vision side; module docstring).

        Args:
            images: ``[B, 3, S, S]`` preprocessed images.
            prompts: ``[n, Wv]`` or ``[B, n, Wv]`` tokens appended after CLS + patches, before ``ln_pre``.
            deep_prompts: ``deep_prompts[i]`` ``[n, Wv]`` or ``[B, n, Wv]`` replaces the n prompt tokens at
                the input of block ``i + 1``; needs `prompts` (same n).

        Returns:
            ``[B, D]`` image features, not normalised; equal to `encode_image` when no prompts are given.

        Raises:
            BackboneError: the backbone's image tower is convolutional.
        """
        v = self._vit()
        deep = list(deep_prompts or [])
        _check_depth(deep, len(v.transformer.resblocks), "vision")
        x = v.conv1(images.to(self.device, self.dtype))  # [B, Wv, g, g]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, g*g, Wv]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = 0
        if prompts is not None:
            n = prompts.shape[-2]
            x = torch.cat([x, _expand_batch(prompts, x.shape[0]).to(x.dtype)], dim=1)
        elif deep:
            raise ValueError("deep vision prompts replace the appended prompt tokens: pass `prompts` as well")
        x = v.ln_pre(x)
        blocks = list(v.transformer.resblocks)
        # The pooled output reads the class token alone: the last block need not compute the other rows.
        cls_only = _pools_class_token(v) and torch.is_autocast_enabled(x.device.type) and _is_plain_block(blocks[-1])
        for i, block in enumerate(blocks):
            if 1 <= i <= len(deep):
                p = deep[i - 1]
                if p.shape[-2] != n:
                    raise ValueError(f"deep_prompts[{i - 1}] has {p.shape[-2]} tokens, `prompts` has {n}")
                x = torch.cat([x[:, : x.shape[1] - n], _expand_batch(p, x.shape[0]).to(x.dtype)], dim=1)
            x = _class_token_block(block, x) if cls_only and i == len(blocks) - 1 else _run_block(block, x, None)
        if n and not cls_only:
            x = x[:, : x.shape[1] - n]
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled

    # ----- misc -----
    def extra_repr(self) -> str:
        return (
            f"identity={self.identity!r}, precision={self.precision}, embed_dim={self.embed_dim}, "
            f"context_length={self.context_length}"
        )


def _shortened(text: str, keep: int = 100) -> str:
    """`text` cut in the middle to about `keep` characters, for an error message that stays readable."""
    if len(text) <= keep:
        return text
    return f"{text[: keep * 2 // 3]} ... {text[-(keep // 3):]}"


def _is_vit(visual: nn.Module) -> bool:
    from open_clip.transformer import VisionTransformer

    return isinstance(visual, VisionTransformer)


def _check_text_tower(text: nn.Module, arch: str) -> None:
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
    causal = getattr(text, "attn_mask", None) is not None
    if not hasattr(text, "token_embedding") or pool != "argmax" or not causal:
        raise BackboneError(
            f"architecture {arch!r}: text tower (pool_type={pool!r}, causal={causal}) is not supported; "
            f"tailprompt needs a causal text transformer pooled at the end-of-text token (OpenAI CLIP layout)"
        )
    if not text.transformer.batch_first:
        raise BackboneError(f"architecture {arch!r}: text transformer is not batch-first (open_clip < 3?)")


def _is_plain_block(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` with a standard ``nn.MultiheadAttention`` (what `_prefix_block`
    re-implements); anything else takes the plain path."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
    )


def _run_block(block: nn.Module, x: Tensor, causal_mask: Tensor | None) -> Tensor:
    """One transformer block on ``[N, T, W]``; `causal_mask` is the text tower's causal mask or None.

    Under autocast, a standard block runs as 2-D projections + SDPA (`_flat_block`): on the CPU, bf16
    ``nn.MultiheadAttention`` projects its transposed ``[T, N, W]`` input with a batched matmul that copies
    the weight once per position (measured on ViT-B/16: 2x slower than fp32 instead of faster). In fp32
    the module's own forward runs, so fp32 results are bit-identical to open_clip's.
    """
    if torch.is_autocast_enabled(x.device.type) and _is_plain_block(block):
        return _flat_block(block, x, causal=causal_mask is not None)
    return block(x, attn_mask=causal_mask) if causal_mask is not None else block(x)


def _flat_block(block: nn.Module, x: Tensor, causal: bool) -> Tensor:
    """`ResidualAttentionBlock.forward` with every projection on ``[N * T, W]`` rows."""
    attn: nn.MultiheadAttention = block.attn
    n, t, w = x.shape
    rows = x.reshape(-1, w)
    q, k, v = F.linear(block.ln_1(rows), attn.in_proj_weight, attn.in_proj_bias).split(w, dim=-1)
    q, k, v = (_split_heads(z.reshape(n, t, w), attn.num_heads) for z in (q, k, v))
    mixed = _merge_heads(_attention(q, k, v, causal)).reshape(-1, w)
    rows = _output_and_mlp(block, rows, mixed)
    return rows.reshape(n, t, w)


def _output_and_mlp(block: nn.Module, residual: Tensor, mixed: Tensor) -> Tensor:
    """The rest of a ``ResidualAttentionBlock`` after attention: ``residual + out_proj(mixed)``, then the MLP
    residual; `mixed` is the heads' merged output for the same rows."""
    x = residual + block.ls_1(block.attn.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, allowed: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention ``[..., T, d]``; on the CPU, when a gradient flows back, as two matmuls.

    The fused CPU kernel's backward in bf16 is 2-2.5x slower than the product form (ViT-B/16, 4 images x 12
    heads x 199 tokens: 27 ms vs 12 ms forward + backward per block; benchmarks/README.md). Its forward is
    as fast or faster, so passes without a graph (the cache fill, evaluation) keep it. `allowed` (boolean,
    broadcast to the scores ``[..., Tq, Tk]``) marks the keys each query may see.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not needs_grad or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [..., Tq, Tk]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if causal:
        t = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


def _pools_class_token(visual: nn.Module) -> bool:
    """Whether the ViT's output is its class token's row (open_clip ``pool_type='tok'``, no attention pool)."""
    return getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", None) == "tok"


def _class_token_block(block: nn.Module, x: Tensor) -> Tensor:
    """`_flat_block` for the class token's row only: ``[N, T, W]`` -> ``[N, 1, W]``.

    Keys and values still come from every row; the query, the output projection and the MLP run for row 0
    alone (about 5/6 of the block's matrix products skipped; the pooled feature is the same up to bf16
    summation order).
    """
    attn: nn.MultiheadAttention = block.attn
    n, t, w = x.shape
    normed = block.ln_1(x)  # [N, T, W]
    q = _in_projection(attn, normed[:, :1], slice(0, w))  # [N, 1, W]
    k, v = _in_projection(attn, normed, slice(w, 3 * w)).split(w, dim=-1)  # [N, T, W] each
    q, k, v = (_split_heads(z, attn.num_heads) for z in (q, k, v))
    return _output_and_mlp(block, x[:, :1], _merge_heads(_attention(q, k, v, causal=False)))


def _in_projection(attn: nn.MultiheadAttention, x: Tensor, part: slice) -> Tensor:
    """The rows `part` of the attention's packed q|k|v in-projection applied to ``x [..., W]``."""
    bias = attn.in_proj_bias
    return F.linear(x, attn.in_proj_weight[part], None if bias is None else bias[part])


def _end_rows_block(block: nn.Module, x: Tensor, ends: Tensor) -> Tensor:
    """The causal `_flat_block` for one row per sequence: ``x [N, T, W]``, ``ends [N]`` -> ``[N, W]``.

    Keys and values come from every position; the query, output projection and MLP run for row ``ends[n]``
    alone, which sees positions ``0 .. ends[n]`` (the causal mask's row).
    """
    attn: nn.MultiheadAttention = block.attn
    n, t, w = x.shape
    normed = block.ln_1(x)
    picked = torch.arange(n, device=x.device)
    q = _in_projection(attn, normed[picked, ends].unsqueeze(1), slice(0, w))  # [N, 1, W]
    k, v = _in_projection(attn, normed, slice(w, 3 * w)).split(w, dim=-1)  # [N, T, W] each
    q, k, v = (_split_heads(z, attn.num_heads) for z in (q, k, v))
    allowed = (torch.arange(t, device=x.device) <= ends[:, None])[:, None, None, :]  # [N, 1, 1, T]
    return _output_and_mlp(block, x[picked, ends], _merge_heads(_attention(q, k, v, False, allowed))[:, 0])


def _prefix_end_rows(block: nn.Module, head: Tensor, tail: Tensor, tails: _PackedRows) -> Tensor:
    """The last `_prefix_block` for the end-of-text rows only: ``[G, K, W]``; `tail` holds the packed rows.

    Every tail's end row attends to the whole head and to its own tail up to itself.
    """
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    w = head.shape[-1]
    normed_head, normed_tail = block.ln_1(head), block.ln_1(tail)
    kh, vh = (_split_heads(z, heads) for z in _in_projection(attn, normed_head, slice(w, 3 * w)).split(w, -1))
    kv_tail = tails.grid(_in_projection(attn, normed_tail, slice(w, 3 * w)))  # [G, K, R, 2W]
    kt, vt = (_split_heads(z, heads) for z in kv_tail.split(w, -1))
    end_x = tail[:, tails.end_rows]  # [G, K, W]
    q = _split_heads(_in_projection(attn, normed_tail[:, tails.end_rows], slice(0, w)).unsqueeze(2), heads)
    scale = q.shape[-1] ** -0.5  # q: [G, K, h, 1, d]
    scores_head = torch.einsum("gkhrd,ghpd->gkhrp", q, kh) * scale
    scores_tail = torch.einsum("gkhrd,gkhsd->gkhrs", q, kt) * scale
    later = torch.arange(tails.r, device=tail.device) > tails.ends[:, None]  # [K, R]: keys past each end
    scores_tail = scores_tail.masked_fill(later[None, :, None, None, :], float("-inf"))
    weights = torch.softmax(torch.cat([scores_head, scores_tail], dim=-1), dim=-1).to(vt.dtype)
    p = kh.shape[-2]
    out = torch.einsum("gkhrp,ghpd->gkhrd", weights[..., :p], vh) + torch.einsum(
        "gkhrs,gkhsd->gkhrd", weights[..., p:], vt
    )
    return _output_and_mlp(block, end_x, _merge_heads(out)[:, :, 0])


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``[..., T, W]`` -> ``[..., heads, T, W / heads]``."""
    *lead, t, w = x.shape
    return x.reshape(*lead, t, heads, w // heads).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[..., heads, T, d]`` -> ``[..., T, heads * d]``."""
    *lead, h, t, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, t, h * d)


@dataclass(frozen=True)
class _PackedRows:
    """K sequences' positions up to their end-of-text tokens, packed into N <= K * R rows.

    The sequences (whole prompts, or the class tails after a shared prefix) are padded to the longest, R
    positions. A position past its sequence's end-of-text token never reaches that token (the tower is
    causal), so the projections and MLPs run on the N real rows alone (ImageNet's 1,000 CoOp prompts after
    the context: 4,165 of 13,000 padded rows) and only attention sees the padded ``[K, R]`` grid, whose
    filler rows no real row attends to.
    """

    r: int  # R, the padded length
    ends: Tensor  # [K] each sequence's end-of-text position, 0 .. R-1
    end_rows: Tensor  # [K] the packed row of each tail's end-of-text token
    slots: Tensor | None  # [N] grid index k * R + j of each real row; None when no tail is padded

    @classmethod
    def of(cls, ends: Tensor, r: int, device: torch.device) -> _PackedRows:
        ends = ends.long()
        end_rows = (ends + 1).cumsum(0) - 1
        slots = None
        if int(end_rows[-1]) + 1 < len(ends) * r:
            slots = (torch.arange(r) <= ends.cpu()[:, None]).flatten().nonzero().squeeze(1).to(device)
        return cls(r, ends.to(device), end_rows.to(device), slots)

    def pack(self, grid: Tensor) -> Tensor:
        """``[G, K, R, C]`` -> ``[G, N, C]``, the real rows in order."""
        flat = grid.reshape(grid.shape[0], -1, grid.shape[-1])
        return flat if self.slots is None else flat.index_select(1, self.slots)

    def grid(self, rows: Tensor) -> Tensor:
        """``[G, N, C]`` -> ``[G, K, R, C]``, zero where a tail has already ended."""
        g, _, c = rows.shape
        k = len(self.ends)
        if self.slots is not None:
            rows = rows.new_zeros(g, k * self.r, c).index_copy(1, self.slots, rows)
        return rows.reshape(g, k, self.r, c)


def _packed_causal_pass(blocks: list[nn.Module], x: Tensor, rows: _PackedRows) -> Tensor:
    """The causal tower on ``x [K, R, W]`` with each sequence run only up to its end -> end rows ``[K, W]``."""
    h = rows.pack(x.unsqueeze(0))  # [1, N, W]
    for block in blocks[:-1]:
        h = _packed_causal_block(block, h, rows)
    return _end_rows_block(blocks[-1], rows.grid(h)[0], rows.ends)


def _packed_causal_block(block: nn.Module, h: Tensor, rows: _PackedRows) -> Tensor:
    """`_flat_block` (causal) on packed rows ``[1, N, W]``; attention runs on the padded grid."""
    attn: nn.MultiheadAttention = block.attn
    w = h.shape[-1]
    flat = h.reshape(-1, w)
    qkv = rows.grid(F.linear(block.ln_1(flat), attn.in_proj_weight, attn.in_proj_bias).unsqueeze(0))[0]
    q, k, v = (_split_heads(z, attn.num_heads) for z in qkv.split(w, dim=-1))  # [K, h, R, d]
    mixed = rows.pack(_merge_heads(_attention(q, k, v, causal=True)).unsqueeze(0)).reshape(-1, w)
    return _output_and_mlp(block, flat, mixed).reshape(h.shape)


def _prefix_block(block: nn.Module, head: Tensor, tail: Tensor, tails: _PackedRows) -> tuple[Tensor, Tensor]:
    """One causal ``ResidualAttentionBlock`` over a shared head ``[G, P, W]`` and K packed tails ``[G, N, W]``.

    The head attends causally to itself (it cannot see the tails). Each tail position attends to the whole
    head and causally to its own tail: one softmax over the concatenated scores, so the result is the
    block's output on the full sequences ``[head; tail_k]`` while the head's projections and MLP run once
    per group instead of once per sequence, and the tails' only for their real rows.
    """
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    # One projection for head and tails together: the (G*P + G*N) rows share the weight read.
    g, p, w = head.shape
    rows = torch.cat([head.reshape(-1, w), tail.reshape(-1, w)])
    qkv = F.linear(block.ln_1(rows), attn.in_proj_weight, attn.in_proj_bias)
    n_head = g * p
    qh, kh, vh = (_split_heads(t, heads) for t in qkv[:n_head].reshape(g, p, 3 * w).split(w, dim=-1))
    qkv_tail = tails.grid(qkv[n_head:].reshape(g, -1, 3 * w))  # [G, K, R, 3W]
    qt, kt, vt = (_split_heads(t, heads) for t in qkv_tail.split(w, dim=-1))  # [G, K, h, R, d]
    out_head = _attention(qh, kh, vh, causal=True)  # [G, h, P, d]
    scale = qt.shape[-1] ** -0.5
    scores_head = torch.einsum("gkhrd,ghpd->gkhrp", qt, kh) * scale  # every tail query sees the whole head
    scores_tail = torch.einsum("gkhrd,gkhsd->gkhrs", qt, kt) * scale
    causal = torch.ones(tails.r, tails.r, dtype=torch.bool, device=tail.device).triu(1)
    scores_tail = scores_tail.masked_fill(causal, float("-inf"))
    weights = torch.softmax(torch.cat([scores_head, scores_tail], dim=-1), dim=-1)
    weights = weights.to(vt.dtype)
    out_tail = torch.einsum("gkhrp,ghpd->gkhrd", weights[..., :p], vh) + torch.einsum(
        "gkhrs,gkhsd->gkhrd", weights[..., p:], vt
    )
    mixed = torch.cat([_merge_heads(out_head).reshape(-1, w), tails.pack(_merge_heads(out_tail)).reshape(-1, w)])
    x = _output_and_mlp(block, rows, mixed)
    return x[:n_head].reshape(head.shape), x[n_head:].reshape(tail.shape)


def _check_depth(deep: list[Tensor], layers: int, tower: str) -> None:
    if len(deep) > layers - 1:
        raise ValueError(
            f"{len(deep)} deep {tower} prompts given but the {tower} tower has {layers} blocks: "
            f"deep_prompts[i] enters block i + 1, so at most {layers - 1}"
        )


def _expand_batch(p: Tensor, batch: int) -> Tensor:
    """``[n, W]`` -> ``[batch, n, W]``; a ``[batch, n, W]`` tensor passes through."""
    if p.dim() == 2:
        return p.unsqueeze(0).expand(batch, -1, -1)
    if p.dim() == 3 and p.shape[0] == batch:
        return p
    raise ValueError(f"prompt tensor of shape {tuple(p.shape)}: expected [n, W] or [{batch}, n, W]")


def _replace_tokens(x: Tensor, p: Tensor, start: int) -> Tensor:
    """Replace positions ``start .. start+n-1`` of ``x [K, L, W]`` by ``p``, clipped to the (cut) length L.

    Clipping is exact: positions past the cut lie after every end-of-text token and cannot reach it.
    """
    end = min(start + p.shape[-2], x.shape[1])
    if end <= start:
        return x
    p = _expand_batch(p, x.shape[0])[:, : end - start].to(x.dtype)
    return torch.cat([x[:, :start], p, x[:, end:]], dim=1)
