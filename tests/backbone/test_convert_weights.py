"""`tailprompt convert-weights`: TorchScript archives (OpenAI's .pt) and plain state dicts -> safetensors."""

from __future__ import annotations

import warnings

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors import safe_open

from tailprompt.backbone import BackboneError, load_backbone
from tailprompt.cli import main
from tailprompt.utils import sha256_file

from .helpers import openai_style, reference_features, tiny_clip

TOL = 1e-5


@pytest.fixture(scope="module")
def openai_torchscript(tmp_path_factory):
    """OpenAI-like TorchScript archive: a traced tiny QuickGELU CLIP with an `input_resolution` buffer."""
    source = tiny_clip(quick_gelu=True, seed=4)
    traced_from = tiny_clip(quick_gelu=True, seed=4)
    traced_from.register_buffer("input_resolution", torch.tensor(32))
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.9; tracer warnings
        traced = torch.jit.trace_module(
            traced_from, {"encode_image": (torch.zeros(1, 3, 32, 32),)}, check_trace=False
        )
        torch.jit.save(traced, str(path))
    return path, source


def metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_loading_a_torchscript_archive_names_the_convert_command(openai_torchscript):
    path, _ = openai_torchscript
    with pytest.raises(BackboneError) as err:
        load_backbone("tiny-vit", weights=path)
    assert f"tailprompt convert-weights {path}" in str(err.value) and "--trust-torchscript" in str(err.value)


def test_convert_refuses_torchscript_without_the_flag(openai_torchscript, tmp_path, capsys):
    path, _ = openai_torchscript
    out = tmp_path / "out.safetensors"
    assert main(["convert-weights", str(path), str(out)]) == 2
    assert "--trust-torchscript" in capsys.readouterr().err
    assert not out.exists()


def test_convert_torchscript_then_load_reproduces_with_quick_gelu(
    openai_torchscript, tmp_path, images, tokens
):
    path, source = openai_torchscript
    out = tmp_path / "ViT-tiny.safetensors"
    assert main(["convert-weights", str(path), str(out), "--trust-torchscript"]) == 0
    meta = metadata(out)
    assert meta["quick_gelu"] == "true" and meta["source_sha256"] == sha256_file(path)
    with safe_open(str(out), framework="pt") as f:
        assert "input_resolution" not in f.keys() and "visual.conv1.weight" in f.keys()
    vlm = load_backbone("tiny-vit", weights=out)
    assert any(isinstance(m, QuickGELU) for m in vlm.modules())
    ref_image, ref_text = reference_features(source, images, tokens)
    assert (vlm.encode_image(images) - ref_image).abs().max() <= TOL
    assert (vlm.encode_text(tokens) - ref_text).abs().max() <= TOL


def test_converted_fp32_file_keeps_the_recorded_activation(tmp_path, images):
    # Once converted, the metadata decides: an fp32 file (no OpenAI signature left) still gets QuickGELU.
    source = tiny_clip(quick_gelu=True, seed=5)
    sd, rounded = openai_style(source)
    src = tmp_path / "openai_plain.pt"
    torch.save(sd, src)
    fp16 = tmp_path / "openai.safetensors"
    assert main(["convert-weights", str(src), str(fp16)]) == 0
    assert metadata(fp16)["source_layout"] == "openai"
    from safetensors.torch import load_file, save_file

    fp32 = tmp_path / "openai_fp32.safetensors"
    save_file({k: v.float() for k, v in load_file(str(fp16)).items()}, str(fp32), metadata=metadata(fp16))
    vlm = load_backbone("tiny-vit", weights=fp32)
    assert any(isinstance(m, QuickGELU) for m in vlm.modules())
    with torch.no_grad():
        assert (vlm.encode_image(images) - rounded.encode_image(images)).abs().max() <= TOL


def test_convert_rejects_a_non_safetensors_output(tmp_path, capsys):
    src = tmp_path / "in.pt"
    torch.save(tiny_clip(False, seed=0).state_dict(), src)
    assert main(["convert-weights", str(src), str(tmp_path / "out.pt")]) == 2
    assert "expected a file name ending in .safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("state_dict, lacks", [
    ({"fc.weight": torch.zeros(2, 2)}, "no visual.* and token_embedding.weight keys"),
    ({"visual.proj": torch.zeros(2, 2)}, "no token_embedding.weight keys"),
])
def test_convert_refuses_a_state_dict_that_is_not_a_clip(tmp_path, capsys, state_dict, lacks):
    src, dst = tmp_path / "in.pt", tmp_path / "out.safetensors"
    torch.save(state_dict, src)
    assert main(["convert-weights", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{src} is not a CLIP checkpoint: {lacks}" in err[0]
    assert not dst.exists()
