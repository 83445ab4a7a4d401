"""Loading checkpoints in every supported format, QuickGELU detection, and the errors for bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from tailprompt.backbone import BackboneError, load_backbone
from tailprompt.backbone.architectures import architecture, build_model
from tailprompt.backbone.checkpoints import normalise_state_dict, read_checkpoint
from tailprompt.utils import sha256_file

from .helpers import openai_style, reference_features, tiny_clip

TOL = 1e-5


@pytest.fixture(scope="module")
def quick_source():
    """An OpenAI-like tiny model: QuickGELU activations."""
    return tiny_clip(quick_gelu=True, seed=1)


@pytest.fixture(scope="module")
def gelu_source():
    """An open_clip-trained-like tiny model: nn.GELU activations."""
    return tiny_clip(quick_gelu=False, seed=2)


def uses_quick_gelu(vlm) -> bool:
    return any(isinstance(m, QuickGELU) for m in vlm.modules())


def assert_reproduces(vlm, source, images, tokens) -> None:
    ref_image, ref_text = reference_features(source, images, tokens)
    assert (vlm.encode_image(images) - ref_image).abs().max() <= TOL
    assert (vlm.encode_text(tokens) - ref_text).abs().max() <= TOL


def test_openai_plain_state_dict_loads_with_quick_gelu(tmp_path, quick_source, images, tokens):
    sd, rounded = openai_style(quick_source)
    path = tmp_path / "ViT-tiny-openai.pt"
    torch.save(sd, path)
    vlm = load_backbone("tiny-vit", weights=path)
    assert uses_quick_gelu(vlm)
    assert_reproduces(vlm, rounded, images, tokens)  # the source after the same fp16 rounding
    assert vlm.identity == f"tiny-vit@sha256:{sha256_file(path)}"
    # the activation matters: forcing GELU on these weights moves the features and the identity
    gelu = load_backbone("tiny-vit", weights=path, quick_gelu="false")
    assert not uses_quick_gelu(gelu)
    assert (gelu.encode_image(images) - vlm.encode_image(images)).abs().max() > 1e-4
    assert gelu.identity == vlm.identity + "+quick_gelu=false"


def test_fp16_mix_alone_marks_the_openai_layout(quick_source):
    sd, _ = openai_style(quick_source)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key)
    assert normalise_state_dict(sd, None)[1] is True
    fp32 = {k: v.float() for k, v in sd.items()}
    assert normalise_state_dict(fp32, None)[1] is False


def test_open_clip_checkpoint_wrapped_and_prefixed(tmp_path, gelu_source, images, tokens):
    wrapped = {
        "epoch": 3,
        "name": "tiny-run",
        "state_dict": {f"module.{k}": v for k, v in gelu_source.state_dict().items()},
    }
    path = tmp_path / "epoch_3.pt"
    torch.save(wrapped, path)
    vlm = load_backbone("tiny-vit", weights=str(path))
    assert not uses_quick_gelu(vlm)
    assert_reproduces(vlm, gelu_source, images, tokens)


def test_legacy_pickle_bin_loads(tmp_path, gelu_source, images, tokens):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(gelu_source.state_dict(), path, _use_new_zipfile_serialization=False)
    assert_reproduces(load_backbone("tiny-vit", weights=path), gelu_source, images, tokens)


def test_safetensors_loads_and_identity_follows_the_file(tmp_path, gelu_source, images, tokens):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in gelu_source.state_dict().items()}, str(path))
    vlm = load_backbone("tiny-vit", weights=path)
    assert not uses_quick_gelu(vlm)
    assert_reproduces(vlm, gelu_source, images, tokens)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(False, seed=3).state_dict().items()}, str(other))
    assert load_backbone("tiny-vit", weights=other).identity != vlm.identity


def test_explicit_quick_gelu_true_overrides_the_file(tmp_path, quick_source, images, tokens):
    path = tmp_path / "plain.safetensors"  # no metadata, fp32: nothing says QuickGELU
    save_file({k: v.contiguous() for k, v in quick_source.state_dict().items()}, str(path))
    assert not uses_quick_gelu(load_backbone("tiny-vit", weights=path))
    vlm = load_backbone("tiny-vit", weights=path, quick_gelu="true")
    assert uses_quick_gelu(vlm)
    assert_reproduces(vlm, quick_source, images, tokens)


# ----- errors -----


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(BackboneError, match=f"weights file not found: {path}"):
        load_backbone("tiny-vit", weights=path)
    with pytest.raises(BackboneError, match="neither an existing file nor an open_clip tag"):
        load_backbone("tiny-vit", weights="openai")


def test_unknown_architecture():
    with pytest.raises(
        BackboneError, match="unknown backbone architecture 'ViT-B-61'.*did you mean .*ViT-B-16"
    ):
        load_backbone("ViT-B-61")


def test_checkpoint_of_another_architecture_names_key_and_shapes(tmp_path):
    arch = architecture("tiny-vit")
    cfg = {**arch.config, "text_cfg": {**arch.config["text_cfg"], "width": 32, "heads": 2}}
    other = build_model(type(arch)("narrow", cfg, "test"), quick_gelu=False, seed=0)
    path = tmp_path / "narrow.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(BackboneError) as err:
        load_backbone("tiny-vit", weights=path)
    message = str(err.value)
    assert str(path) in message and "'tiny-vit'" in message
    assert "positional_embedding has shape (77, 32) in the file but (77, 64)" in message


def test_integer_weights_are_refused_naming_the_tensor(tmp_path):
    model = build_model(architecture("tiny-vit"), quick_gelu=False, seed=0)
    state = {k: (v * 100).to(torch.int32) if k == "positional_embedding" else v for k, v in model.state_dict().items()}
    path = tmp_path / "ints.pt"
    torch.save(state, path)
    with pytest.raises(BackboneError, match=f"{path}: positional_embedding holds int32 values where tiny-vit has "
                                            f"float32 ones"):
        load_backbone("tiny-vit", weights=path)


def test_checkpoint_with_other_layer_names(tmp_path):
    conv = build_model(architecture("embedded"), quick_gelu=False, seed=0)
    path = tmp_path / "conv.pt"
    torch.save(conv.state_dict(), path)
    with pytest.raises(BackboneError, match=r"does not fit architecture 'tiny-vit'.*(missing|shape)"):
        load_backbone("tiny-vit", weights=path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, gelu_source, suffix):
    full = tmp_path / f"full{suffix}"
    sd = {k: v.contiguous() for k, v in gelu_source.state_dict().items()}
    save_file(sd, str(full)) if suffix == ".safetensors" else torch.save(sd, full)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match=f"{cut} is truncated or corrupt"):
        load_backbone("tiny-vit", weights=cut)


def test_unrecognised_and_empty_files(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("hello")
    with pytest.raises(BackboneError, match="not a recognised checkpoint"):
        read_checkpoint(junk)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(BackboneError, match="is empty"):
        read_checkpoint(empty)


def test_pickled_objects_are_refused_not_executed(tmp_path, gelu_source):
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": gelu_source.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(BackboneError, match="weights_only=True"):
        load_backbone("tiny-vit", weights=path)


def test_pretrained_tag_without_network_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying
    with pytest.raises(
        BackboneError, match="ViT-B-16 / openai are not in the Hugging Face cache and the network is unreachable"
    ):
        load_backbone("ViT-B-16", weights="openai")


@pytest.mark.parametrize("arch_name", ["tiny-vit", "embedded"])
def test_a_model_built_to_load_equals_the_random_init_one_after_loading(arch_name):
    """Skipping the random init is exact: after `load_into` every parameter and buffer, the causal mask
    (which no file holds) included, equals the model built with a random init and loaded the same way."""
    from tailprompt.backbone.architectures import build_model_to_load, load_into

    arch = architecture(arch_name)
    source = build_model(arch, quick_gelu=False, seed=3).state_dict()
    built = build_model(arch, quick_gelu=False, seed=0)
    empty = build_model_to_load(arch, quick_gelu=False)
    for model in (built, empty):
        load_into(model, dict(source), Path("weights.pt"), arch_name)
    want = dict(built.named_buffers()) | dict(built.named_parameters())
    got = dict(empty.named_buffers()) | dict(empty.named_parameters())
    assert want.keys() == got.keys() and "attn_mask" in got
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_state_dict_keys_that_are_not_names_are_refused_naming_the_file(tmp_path, gelu_source):
    path = tmp_path / "odd_keys.pt"
    torch.save({**gelu_source.state_dict(), 3: torch.zeros(1)}, path)
    with pytest.raises(BackboneError, match=rf"{path}: state dict keys must be parameter names \(strings\), got \[3\]"):
        read_checkpoint(path)


def test_a_plain_pickle_is_one_error_without_torchs_warnings(tmp_path, recwarn):
    import pickle

    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))  # starts like a torch pickle, is not one
    with pytest.raises(BackboneError, match=rf"{path} is truncated or corrupt, or not a torch.save file of tensors "
                                            r"\(UnpicklingError: Unsupported"):
        read_checkpoint(path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused_naming_file_and_tensor(tmp_path, gelu_source, bad):
    sd = {k: v.clone() for k, v in gelu_source.state_dict().items()}
    sd["visual.proj"][0, 0] = bad
    path = tmp_path / "damaged.safetensors"
    save_file(sd, str(path))
    with pytest.raises(BackboneError, match=rf"{path}: visual.proj hold NaN or infinite values"):
        load_backbone("tiny-vit", weights=path)


def test_huge_but_finite_weights_load(tmp_path, gelu_source):
    """A float32 sum that overflows is not taken for an infinite weight."""
    sd = {k: v.clone() for k, v in gelu_source.state_dict().items()}
    sd["visual.proj"].fill_(3e38)
    path = tmp_path / "huge.safetensors"
    save_file(sd, str(path))
    assert load_backbone("tiny-vit", weights=path, precision="fp32").model.visual.proj.max() == pytest.approx(3e38)
