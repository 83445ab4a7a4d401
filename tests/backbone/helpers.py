"""Helpers shared by the backbone tests: tiny checkpoint sources and open_clip reference features."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tailprompt.backbone.architectures import architecture, build_model

PROMPTS = ["a photo of a cat.", "a photo of a golden retriever on the grass.", "x"]


def tiny_clip(quick_gelu: bool, seed: int) -> nn.Module:
    """A tiny-vit open_clip model (the object a checkpoint file is written from)."""
    return build_model(architecture("tiny-vit"), quick_gelu=quick_gelu, seed=seed).eval()


def reference_features(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    """open_clip's own image and text features of `model` (the numbers a loaded copy must reproduce)."""
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def openai_style(model: nn.Module) -> tuple[dict[str, object], nn.Module]:
    """OpenAI's plain state-dict layout of `model` and the fp32 model it must load as.

    OpenAI's `convert_weights` casts linear/conv/attention weights and the projections to fp16 and keeps
    norms and embeddings in fp32; the dict also carries three integer entries.
    """
    from open_clip.model import convert_weights_to_lp

    half = copy.deepcopy(model)
    convert_weights_to_lp(half, torch.float16)
    sd: dict[str, object] = dict(half.state_dict())
    sd["input_resolution"] = torch.tensor(32)
    sd["context_length"] = torch.tensor(77)
    sd["vocab_size"] = 49408  # some files hold plain ints
    return sd, half.float()
