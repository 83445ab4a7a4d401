"""`tailprompt convert-weights IN OUT.safetensors`: turn a CLIP checkpoint into a plain safetensors file.

OpenAI distributes CLIP as TorchScript archives (``ViT-B-16.pt``); loading one runs code stored in the file,
so it needs ``--trust-torchscript`` and happens once here. The output holds the bare state dict (wrappers,
``module.`` prefixes and OpenAI's integer entries removed; dtypes kept) and records in its metadata whether
the weights were trained with QuickGELU, so `load_backbone` builds the right activation without being told.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tailprompt.cli import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-weights",
        help="convert a CLIP checkpoint (OpenAI TorchScript .pt, state dict) to .safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="checkpoint to read (.pt/.bin/.safetensors/TorchScript)")
    p.add_argument("output", type=Path, help="file to write, ending in .safetensors")
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow reading a TorchScript archive (this executes code from the file; only for trusted files)",
    )
    p.add_argument(
        "--quick-gelu",
        default="auto",
        choices=["auto", "true", "false"],
        help="activation to record; auto = QuickGELU for OpenAI-layout weights (default: auto)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = convert_weights(args.input, args.output, args.trust_torchscript, args.quick_gelu)
    print(
        f"wrote {args.output} ({info['tensors']} tensors, quick_gelu={info['quick_gelu']}, "
        f"source layout {info['source_layout']})"
    )
    return 0


def convert_weights(
    src: Path, dst: Path, trust_torchscript: bool = False, quick_gelu: str | bool = "auto"
) -> dict[str, str]:
    """Convert `src` to safetensors at `dst` (written atomically) and return the metadata written.

    Raises:
        UserError: TorchScript input without `trust_torchscript`, an output not ending in .safetensors, or any
            unreadable input or one that is not a CLIP's state dict (as `BackboneError`, a `UserError`).
    """
    from tailprompt.backbone.checkpoints import (
        SAFETENSORS_QUICK_GELU_KEY,
        check_clip_layout,
        file_format,
        normalise_state_dict,
        read_checkpoint,
        read_torchscript_state_dict,
    )
    from tailprompt.backbone.loader import parse_quick_gelu
    from tailprompt.files import check_output_file
    from tailprompt.utils import sha256_file, write_safetensors_atomic

    check_output_file(dst, "output", (".safetensors",))  # before the (possibly long) read of the input
    if os.path.realpath(dst) == os.path.realpath(src):  # realpath, unlike resolve(), does not raise on a link loop
        raise UserError(f"output {dst} would overwrite the input")
    override = parse_quick_gelu(quick_gelu)
    if file_format(src) == "torchscript":
        if not trust_torchscript:
            raise UserError(
                f"{src} is a TorchScript archive; reading it executes code from the file. If you trust it, "
                f"rerun with --trust-torchscript: tailprompt convert-weights {src} {dst} --trust-torchscript"
            )
        state_dict, openai = normalise_state_dict(read_torchscript_state_dict(src), src)
        layout, natural = ("openai" if openai else "torchscript"), (True if openai else None)
    else:
        ckpt = read_checkpoint(src)
        state_dict, layout, natural = ckpt.state_dict, ckpt.layout, ckpt.quick_gelu
    check_clip_layout(state_dict, src)
    qg = override if override is not None else bool(natural)
    metadata = {
        SAFETENSORS_QUICK_GELU_KEY: str(qg).lower(),
        "source_layout": layout,
        "source_file": src.name,
        "source_sha256": sha256_file(src),
        "converted_by": "tailprompt convert-weights",
    }
    # clone: TorchScript state dicts can share storage, which safetensors refuses to write.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
    write_safetensors_atomic(dst, tensors, metadata, "converted weights")
    return {**metadata, "tensors": str(len(tensors))}
