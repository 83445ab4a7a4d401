"""Reading CLIP weights from local files: format detection, unwrapping, the OpenAI signature.

Supported layouts (detected from the bytes, never from a flag):

- OpenAI plain state dict (``torch.save(model.state_dict())`` of OpenAI's CLIP): OpenAI key names, the
  linear/conv/attention weights in fp16 and the rest in fp32, plus the integer entries
  ``input_resolution``, ``context_length``, ``vocab_size``. Trained with QuickGELU.
- open_clip checkpoint (``.pt``/``.bin``): a state dict, possibly wrapped as ``{"state_dict": ...}`` by
  open_clip's trainer and possibly with ``module.`` prefixes from DistributedDataParallel.
- ``.safetensors``: a flat state dict; ``tailprompt convert-weights`` records ``quick_gelu`` in its metadata.
- TorchScript archives (OpenAI's distributed ``ViT-B-16.pt``) are refused: loading them executes code, so
  they go through ``tailprompt convert-weights IN OUT --trust-torchscript`` once.

Everything here loads with ``weights_only=True`` or safetensors: no code from a checkpoint runs.
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tailprompt.errors import UserError

# Integer entries OpenAI's state dicts carry next to the tensors (open_clip's build_model pops them too).
OPENAI_INT_KEYS = ("input_resolution", "context_length", "vocab_size")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_QUICK_GELU_KEY = "quick_gelu"


class BackboneError(UserError, ValueError):
    """A backbone that cannot be built or loaded as asked; the message names the file or name and why.

    Subclasses the CLI's `UserError`, so any command that loads a backbone prints one line and exits 2.
    """


@dataclass(frozen=True)
class Checkpoint:
    """A state dict read from a file, plus what the file says about its activation.

    Attributes:
        state_dict: parameter name -> tensor, unwrapped, prefixes stripped, integer entries dropped.
        layout: ``openai`` | ``open_clip`` | ``safetensors`` (how the file was recognised).
        quick_gelu: True/False when the file says which activation it was trained with (OpenAI signature or
            convert-weights metadata), None when it does not say.
        metadata: safetensors metadata (empty for torch files).
    """

    state_dict: dict[str, torch.Tensor]
    layout: str
    quick_gelu: bool | None
    metadata: dict[str, str]


def torchscript_error(path: Path) -> BackboneError:
    return BackboneError(
        f"{path} is a TorchScript archive (OpenAI's distributed .pt format); loading it would run code from "
        f"the file. Convert it once with: tailprompt convert-weights {path} "
        f"{path.with_suffix('.safetensors')} --trust-torchscript"
    )


def file_format(path: Path) -> str:
    """Return ``safetensors`` | ``torch-zip`` | ``torchscript`` | ``torch-pickle`` from the file's bytes.

    Raises:
        BackboneError: missing, empty, truncated or unrecognised file.
    """
    if not path.exists():
        raise BackboneError(f"weights file not found: {path}")
    if path.is_dir():
        raise BackboneError(f"weights path is a folder, expected a file: {path}")
    if not path.is_file():
        raise BackboneError(f"weights file {path} is not a regular file (a pipe, socket or device)")
    size = path.stat().st_size
    if size == 0:
        raise BackboneError(f"weights file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if len(head) == 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise BackboneError(f"weights file {path} is truncated or corrupt (header runs past the end)")
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch-pickle"
    raise BackboneError(
        f"weights file {path} is not a recognised checkpoint (expected a PyTorch .pt/.bin state dict, "
        f"a .safetensors file or a TorchScript archive)"
    )


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise BackboneError(f"weights file {path} is truncated or corrupt ({e})") from e
    # torch.jit.save writes code/ and constants.pkl next to data.pkl; torch.save writes only data.pkl + data/.
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "torch-zip"


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a supported weights file into a normalised `Checkpoint` (TorchScript refused).

    Raises:
        BackboneError: the message names the file and the problem (missing, truncated, TorchScript, ...).
    """
    path = Path(path)
    fmt = file_format(path)
    if fmt == "torchscript":
        raise torchscript_error(path)
    if fmt == "safetensors":
        tensors, metadata = _read_safetensors(path)
        hint = _metadata_quick_gelu(metadata, path)
        sd, openai = normalise_state_dict(tensors, path)
        quick_gelu = hint if hint is not None else (True if openai else None)
        return Checkpoint(sd, "safetensors", quick_gelu, metadata)
    raw = _torch_load(path)
    sd, openai = normalise_state_dict(raw, path)
    return Checkpoint(sd, "openai" if openai else "open_clip", True if openai else None, {})


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, object]:
    """Load a TorchScript archive and return its state dict. Runs code from the file: ask the user first."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript deprecated; reading OpenAI's archives is the one use left here.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError subclasses with long C++ traces
        raise BackboneError(f"cannot read TorchScript archive {path}: {error_summary(e)}") from e
    return dict(module.state_dict())


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError is not importable under a stable name across versions
        raise BackboneError(f"weights file {path} is truncated or corrupt ({error_summary(e)})") from e
    return tensors, metadata


def _torch_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise BackboneError(
                f"weights file {path} holds Python objects beyond tensors and plain containers; tailprompt "
                f"only loads it with weights_only=True. Save its state dict alone "
                f"(torch.save(model.state_dict(), ...)) or convert it with tailprompt convert-weights"
            ) from e
        raise BackboneError(f"weights file {path} is truncated or corrupt, or not a torch.save file of tensors "
                            f"({error_summary(e)})") from e
    except (IsADirectoryError, PermissionError) as e:
        raise BackboneError(f"weights file {path} cannot be read ({e.strerror})") from e
    except Exception as e:  # a cut archive or another format: torch raises anything from KeyError to OSError
        raise BackboneError(f"weights file {path} is truncated or corrupt ({error_summary(e)})") from e


def normalise_state_dict(raw: object, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Unwrap ``state_dict``, strip wrapper prefixes, drop OpenAI's integer entries.

    Returns:
        (state dict of floating tensors, whether the file carries the OpenAI signature: the integer entries
        or a mix of fp16 and fp32 weights).
    """
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise BackboneError(f"weights file {path} does not hold a state dict (found {type(raw).__name__})")
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise BackboneError(f"weights file {path}: state dict keys must be parameter names (strings), got "
                            f"{odd[:3]}")
    sd = dict(raw)
    for prefix in _WRAPPER_PREFIXES:
        if all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    has_int_entries = any(k in sd for k in OPENAI_INT_KEYS)
    for key in OPENAI_INT_KEYS:
        sd.pop(key, None)
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise BackboneError(
                f"weights file {path}: entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
    return sd, has_int_entries or has_fp16_mix(sd)


def check_clip_layout(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a state dict that is not a CLIP's: both towers' keys (``visual.*`` and the token embedding, at the
    top level or under ``text.``) must be there, whatever the architecture."""
    text = any(k in sd for k in ("token_embedding.weight", "text.token_embedding.weight"))
    visual = any(k.startswith("visual.") for k in sd)
    if not (text and visual):
        lacks = " and ".join(w for w, ok in (("visual.*", visual), ("token_embedding.weight", text)) if not ok)
        raise BackboneError(f"weights file {path} is not a CLIP checkpoint: no {lacks} keys (found e.g. "
                            f"{', '.join(sorted(sd)[:3])})")


def has_fp16_mix(sd: dict[str, torch.Tensor]) -> bool:
    """OpenAI's convert_weights casts only linear/conv/attention weights to fp16: a mix is its signature."""
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    return torch.float16 in dtypes and torch.float32 in dtypes


def _metadata_quick_gelu(metadata: dict[str, str], path: Path) -> bool | None:
    value = metadata.get(SAFETENSORS_QUICK_GELU_KEY)
    if value is None:
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BackboneError(f"{path}: metadata {SAFETENSORS_QUICK_GELU_KEY}={value!r}, expected true or false")


def error_summary(e: BaseException) -> str:
    """`Type: first line` of an error; for torch's many-line unpickling errors, the line saying what failed;
    for a file that ended before its first record, that it is empty or cut short."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if isinstance(e, EOFError) or not lines:
        return "empty or cut short"
    said = next((line for line in lines if "unsupported" in line.lower()), lines[0])
    return f"{type(e).__name__}: {said[:200]}"
