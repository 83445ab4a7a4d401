"""Architectures as data: open_clip's model configs plus the two the package ships.

`tiny-vit` (``model_configs/tiny-vit.json``) is a small random ViT CLIP for tests: 32 px images, 8 px
patches, 3 vision and 3 text blocks of width 64. `embedded` is the project's own small pretrained CLIP (conv
image tower): its config lives next to its weights in ``backbone/embedded/`` (written by ``tailprompt
pretrain-embedded``); until that exists the architecture in ``model_configs/embedded.json`` is used.
`embedded-vit` (``backbone/embedded_vit/``, written by ``tailprompt pretrain-embedded --vision vit``) is a
small ViT image tower distilled from it, with the same text tower.

Configs are read from our own folder and passed to open_clip's model classes directly; open_clip's global
config registry is only read, never extended.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from tailprompt.backbone.checkpoints import BackboneError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_VIT_DIR = Path(__file__).parent / "embedded_vit"
PACKAGE_ARCHITECTURES = ("tiny-vit", "embedded", "embedded-vit")
# Shipped pretrained models: name -> the folder holding weights.safetensors, config.json, vocabulary.txt.
EMBEDDED_FOLDERS = MappingProxyType({"embedded": EMBEDDED_DIR, "embedded-vit": EMBEDDED_VIT_DIR})


@dataclass(frozen=True)
class Architecture:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, optional ``quick_gelu``)."""

    name: str
    config: dict[str, Any]
    source: str  # the JSON file it came from, or "open_clip"

    @property
    def quick_gelu(self) -> bool:
        return bool(self.config.get("quick_gelu", False))


def embedded_config_path(name: str = "embedded") -> Path:
    return EMBEDDED_FOLDERS[name] / "config.json"


def embedded_weights_path(name: str = "embedded") -> Path:
    return EMBEDDED_FOLDERS[name] / "weights.safetensors"


def embedded_vit_weights_path() -> Path:
    return embedded_weights_path("embedded-vit")


def embedded_vocabulary_path(name: str = "embedded") -> Path:
    return EMBEDDED_FOLDERS[name] / "vocabulary.txt"


def architecture(name: str) -> Architecture:
    """Resolve an architecture name to its config.

    Raises:
        BackboneError: unknown name (the message lists close matches).
    """
    if name in EMBEDDED_FOLDERS:
        path = embedded_config_path(name)
        return architecture_from_file(name, path if path.is_file() else MODEL_CONFIG_DIR / f"{name}.json")
    if name in PACKAGE_ARCHITECTURES:
        return architecture_from_file(name, MODEL_CONFIG_DIR / f"{name}.json")
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = list(PACKAGE_ARCHITECTURES) + open_clip.list_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(
            f"unknown backbone architecture {name!r}: expected an open_clip model name "
            f"(open_clip.list_models()), 'tiny-vit', 'embedded' or 'embedded-vit'{hint}"
        )
    return Architecture(name, copy.deepcopy(cfg), "open_clip")


def architecture_from_file(name: str, path: Path) -> Architecture:
    """An architecture from an open_clip model config JSON file (`BackboneError` if unreadable)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneError(f"cannot read model config {path}: {e}") from e
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise BackboneError(f"model config {path} lacks {', '.join(missing)} (an open_clip model config)")
    return Architecture(name, cfg, str(path))


def build_model(arch: Architecture, quick_gelu: bool, seed: int) -> nn.Module:
    """A random-init fp32 open_clip model of `arch`; `seed` fixes the init, the caller's RNG is untouched."""
    model_cls, cfg = _model_class_and_config(arch, quick_gelu)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(**cfg)
    return model


def build_model_to_load(arch: Architecture, quick_gelu: bool) -> nn.Module:
    """An open_clip model of `arch` on the meta device (no memory, no init), for `load_into` to fill.

    A random init that the weights then overwrite costs seconds on ViT-B/16 (every matrix drawn twice:
    PyTorch's default init, then open_clip's) and a second copy of the model in memory. `load_into` puts
    the file's tensors in place instead, cast to the dtypes the meta parameters carry (fp32, or bf16 where
    `store_matmul_weights` ran on the meta model).
    """
    model_cls, cfg = _model_class_and_config(arch, quick_gelu)
    with torch.device("meta"):
        return model_cls(**cfg)


def _causal_mask(like: torch.Tensor) -> torch.Tensor:
    """open_clip's additive causal mask (``TextTransformer.build_causal_mask``): -inf above the diagonal."""
    n = like.shape[-1]
    return torch.full((n, n), float("-inf")).triu_(1)


def _model_class_and_config(arch: Architecture, quick_gelu: bool) -> tuple[type[nn.Module], dict[str, Any]]:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(arch.config)
    custom_text = bool(cfg.pop("custom_text", False))
    if "multimodal_cfg" in cfg:
        raise BackboneError(f"architecture {arch.name!r} is a captioning model (CoCa), not a CLIP")
    if cfg["text_cfg"].get("hf_model_name"):
        raise BackboneError(
            f"architecture {arch.name!r} has a Hugging Face text tower; tailprompt needs CLIP's own"
        )
    cfg["quick_gelu"] = quick_gelu
    return (CustomTextCLIP if custom_text else CLIP), cfg


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch_name: str) -> None:
    """Copy `state_dict` into `model` (cast to the model's dtypes), checking names and shapes first.

    A model on the meta device (`build_model_to_load`) takes the tensors in place (``assign``) in the
    dtypes its parameters carry; its causal mask, which no file holds, is rebuilt.

    Raises:
        BackboneError: naming the file, the first mismatching key and both shapes, or the missing/extra keys.
    """
    if hasattr(model, "text") and "text_projection" in state_dict:
        from open_clip.model import convert_to_custom_text_state_dict

        state_dict = convert_to_custom_text_state_dict(state_dict)
    expected = model.state_dict()
    # Non-persistent buffers (the causal attn_mask) are rebuilt by the model; TorchScript archives save them.
    rebuilt = {name for name, _ in model.named_buffers()} - set(expected)
    state_dict = {k: v for k, v in state_dict.items() if k not in rebuilt}
    for key, value in state_dict.items():
        if key in expected and value.is_floating_point() != expected[key].is_floating_point():
            raise BackboneError(  # a cast would turn integer weights into a model of rounded numbers silently
                f"weights file {path}: {key} holds {str(value.dtype).removeprefix('torch.')} values where "
                f"{arch_name} has {str(expected[key].dtype).removeprefix('torch.')} ones"
            )
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise BackboneError(
                f"weights file {path} does not fit architecture {arch_name!r}: {key} has shape "
                f"{tuple(value.shape)} in the file but {tuple(expected[key].shape)} in {arch_name} "
                f"(a checkpoint of another architecture?)"
            )
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        raise BackboneError(
            f"weights file {path} does not fit architecture {arch_name!r}: keys {'; '.join(parts)} "
            f"(a checkpoint of another architecture?)"
        )
    if not any(t.is_meta for t in expected.values()):
        model.load_state_dict(state_dict, strict=True)
        return
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    for name in rebuilt:  # still on the meta device: no file holds them
        owner = model.get_submodule(name.rpartition(".")[0])
        leaf = name.rpartition(".")[2]
        if leaf != "attn_mask":
            raise BackboneError(f"architecture {arch_name!r}: cannot rebuild the non-persistent buffer {name!r}")
        owner.register_buffer(leaf, _causal_mask(getattr(owner, leaf)), persistent=False)
