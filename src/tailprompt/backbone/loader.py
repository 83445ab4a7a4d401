"""`load_backbone`: architecture name + weights (file, open_clip tag or none) -> `FrozenVLM`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from tailprompt.backbone.architectures import (
    EMBEDDED_FOLDERS,
    PACKAGE_ARCHITECTURES,
    Architecture,
    architecture,
    build_model,
    build_model_to_load,
    embedded_vocabulary_path,
    embedded_weights_path,
    load_into,
)
from tailprompt.backbone.checkpoints import BackboneError, error_summary, read_checkpoint
from tailprompt.backbone.frozen import FrozenVLM
from tailprompt.backbone.precision import resolve_precision, store_matmul_weights
from tailprompt.backbone.transforms import CLIP_MEAN, CLIP_STD
from tailprompt.utils import release_freed_memory, remembered_sha256

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def parse_quick_gelu(value: str | bool | None) -> bool | None:
    """``auto`` (or None) -> None (decide from the weights); ``true``/``false`` (or bools) -> that value."""
    if value is None or isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered == "auto":
        return None
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BackboneError(f"quick_gelu={value!r}: expected auto, true or false")


def load_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    quick_gelu: str | bool = "auto",
    seed: int = 0,
    precision: str = "auto",
) -> FrozenVLM:
    """Build a frozen CLIP backbone.

    Args:
        name: an open_clip architecture (``ViT-B-16``, ``RN50``, ...), ``tiny-vit`` (small random ViT for
            tests), ``embedded`` (the package's own pretrained small CLIP, conv image tower) or
            ``embedded-vit`` (its ViT image tower twin, distilled from it, same text tower).
        weights: a local file (OpenAI plain state dict, open_clip ``.pt``/``.bin``, ``.safetensors``; the
            format is detected), an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``: needs
            internet or a filled Hugging Face cache), or None for a random init (with a warning;
            ``embedded`` and ``embedded-vit`` then use the shipped weights when present).
        device: where the model lives.
        quick_gelu: ``auto`` uses QuickGELU when the weights say so (OpenAI layout, convert-weights metadata,
            a ``quick_gelu`` tag) or the architecture config does; ``true``/``false`` force it.
        seed: random init seed (only matters without weights).
        precision: ``auto`` | ``fp32`` | ``bf16``, resolved here for `device` (`resolve_precision`). In bf16
            the matrix weights are stored in bf16 (`store_matmul_weights`; autocast's numbers) and the
            towers' methods run under the backbone's autocast themselves.

    Returns:
        A `FrozenVLM` in eval mode with all parameters frozen.

    Raises:
        BackboneError: unknown architecture, missing/truncated/TorchScript file, a checkpoint of another
            architecture; the message names the file or name and what was expected.
    """
    override = parse_quick_gelu(quick_gelu)
    resolved = resolve_precision(precision, device)
    arch = architecture(name)
    vocabulary = _embedded_vocabulary(name) if name in EMBEDDED_FOLDERS else None
    if weights is None and name in EMBEDDED_FOLDERS:
        if embedded_weights_path(name).is_file():
            weights = embedded_weights_path(name)
        else:
            rebuild = "tailprompt pretrain-embedded" + (" --vision vit" if name == "embedded-vit" else "")
            warnings.warn(
                f"{name} backbone weights not found at {embedded_weights_path(name)}: using random weights "
                f"(rebuild them with `{rebuild}`)",
                stacklevel=2,
            )
    mean, std = CLIP_MEAN, CLIP_STD
    if weights is None:
        qg = override if override is not None else arch.quick_gelu
        model = build_model(arch, qg, seed)
        identity = f"{name}@random:{seed}" + _activation_suffix(qg, arch.quick_gelu)
        if name not in PACKAGE_ARCHITECTURES:
            warnings.warn(
                f"backbone {name}: no weights given, using a random init (seed {seed}); its features carry "
                f"no meaning (fine for tests and benchmarks)",
                stacklevel=2,
            )
    elif _is_pretrained_tag(name, weights):
        model, identity, mean, std = _load_tag(arch, str(weights), override)
    else:
        path = Path(weights).expanduser()
        ckpt = read_checkpoint(path)
        auto = ckpt.quick_gelu if ckpt.quick_gelu is not None else arch.quick_gelu
        qg = override if override is not None else auto
        model = build_model_to_load(arch, qg)
        if resolved == "bf16":
            store_matmul_weights(model, torch.bfloat16)  # on the meta model: the file's tensors land in bf16
        load_into(model, ckpt.state_dict, path, name)
        check_finite_weights(model, path)
        identity = f"{name}@sha256:{remembered_sha256(path)}" + _activation_suffix(qg, auto)
        del ckpt  # the file's tensors, copied into the model: freed before `release_freed_memory`
    model = model.to(device)
    vlm = FrozenVLM(
        model,
        arch=name,
        identity=identity,
        embed_dim=int(arch.config["embed_dim"]),
        vocabulary=vocabulary,
        mean=mean,
        std=std,
        precision=resolved,
    )
    release_freed_memory()  # the file's state dict is gone; its pages need not count against the run
    return vlm


def check_finite_weights(model: torch.nn.Module, path: Path) -> None:
    """Raise a `BackboneError` naming the file and its first tensors that hold NaN or infinite values.

    A damaged or diverged checkpoint would otherwise give NaN features that a cache stores and every later run
    reads. One float32 sum per tensor finds it (~0.05 s for ViT-B/16, where an element-wise test takes 0.3 s);
    a sum that overflows is confirmed element-wise, so huge but finite weights pass.
    """
    tensors = [(k, t) for k, t in model.state_dict().items() if t.is_floating_point()]
    sums = torch.stack([t.sum(dtype=torch.float32) for _, t in tensors]) if tensors else torch.zeros(0)
    suspects = [tensors[i] for i in (~torch.isfinite(sums)).nonzero().flatten().tolist()]
    bad = [k for k, t in suspects if not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BackboneError(f"weights file {path}: {', '.join(bad[:3])}{more} hold NaN or infinite values "
                            f"(a damaged or diverged checkpoint)")


def _activation_suffix(chosen: bool, natural: bool) -> str:
    # The same weights under the other activation give other features: keep cache keys apart.
    return "" if chosen == natural else f"+quick_gelu={str(chosen).lower()}"


def _is_pretrained_tag(name: str, weights: str | os.PathLike[str]) -> bool:
    text = str(weights)
    if Path(text).expanduser().exists():
        return False
    if name not in PACKAGE_ARCHITECTURES:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        if text in tags:
            return True
    else:
        tags = []
    if os.sep in text or "/" in text or text.endswith(_WEIGHT_SUFFIXES):
        raise BackboneError(f"weights file not found: {text}")
    known = f"known tags for {name}: {', '.join(tags)}" if tags else f"{name} has no pretrained tags"
    raise BackboneError(f"weights {text!r} is neither an existing file nor an open_clip tag ({known})")


def _load_tag(arch: Architecture, tag: str, override: bool | None) -> tuple[object, str, tuple, tuple]:
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(arch.name, tag)
    natural = bool(pcfg.get("quick_gelu", False)) or arch.quick_gelu
    qg = override if override is not None else natural
    # A cached file loads from disk; with neither a cache nor a network, fail now instead of after
    # huggingface_hub's retries (~55 s offline).
    source: str = cached_pretrained_file(pcfg) or tag
    if source == tag and not hub_reachable():
        raise BackboneError(
            f"open_clip pretrained weights {arch.name} / {tag} are not in the Hugging Face cache and the "
            f"network is unreachable: pretrained tags need internet access or a filled Hugging Face cache; "
            f"otherwise download the checkpoint elsewhere and pass its path as backbone.weights"
        )
    try:
        model = open_clip.create_model(
            arch.name, pretrained=source, force_quick_gelu=qg, quick_gelu=qg, precision="fp32", device="cpu"
        )
    except Exception as e:  # open_clip wraps download failures in RuntimeError with a long text
        raise BackboneError(
            f"cannot load open_clip pretrained weights {arch.name} / {tag}: {error_summary(e)}. Pretrained "
            f"tags need internet access or a filled Hugging Face cache; otherwise download the checkpoint "
            f"elsewhere and pass its path as the weights"
        ) from e
    identity = f"{arch.name}@{tag}" + _activation_suffix(qg, natural)
    return model, identity, tuple(pcfg.get("mean", CLIP_MEAN)), tuple(pcfg.get("std", CLIP_STD))


def cached_pretrained_file(pcfg: dict) -> str | None:
    """The local file of an open_clip pretrained config's Hugging Face entry, if already downloaded."""
    hub = str(pcfg.get("hf_hub") or "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    for name in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within `timeout_s` (offline machines: no)."""
    import socket

    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        pass
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _embedded_vocabulary(name: str) -> set[str] | None:
    path = embedded_vocabulary_path(name)
    if not path.is_file():
        return None
    words = {line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()}
    return {w for w in words if w} or None
