"""Pretraining of the embedded CLIP: exact pieces, a tiny run that learns, and the shipped weights."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from tailprompt.cli import main
from tailprompt.data.registry import load_dataset
from tailprompt.world import captions as world_captions
from tailprompt.world import pretrain as P
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab


def test_pretraining_trains_the_backbone_adapters_model_and_its_text_forward_is_open_clips():
    vlm = P.trainable_embedded(seed=0)
    assert all(p.requires_grad for p in vlm.model.parameters())
    assert vlm.context_length == P.embedded_architecture().config["text_cfg"]["context_length"]
    tokens = P.make_tokenizer(vlm)(["a red circle.", "there is a big blue striped star in the image.", "a."])
    feats = vlm.encode_text(tokens)
    with torch.no_grad():
        assert torch.allclose(feats, vlm.model.encode_text(tokens), atol=1e-5)
    feats.sum().backward()  # gradients reach the text tower through the adapter's forward
    assert vlm.model.token_embedding.weight.grad is not None


def test_contrastive_loss_is_clip_loss_when_captions_differ_and_shares_targets_when_equal():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(10.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    assert torch.allclose(P.contrastive_loss(img, txt, scale, torch.arange(6)), clip)
    # items 0 and 1 share a caption: swapping their texts must not change the loss
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    same_caption_texts = txt.clone()
    same_caption_texts[1] = txt[0]
    swapped = same_caption_texts[[1, 0, 2, 3, 4, 5]]
    assert torch.allclose(
        P.contrastive_loss(img, same_caption_texts, scale, ids), P.contrastive_loss(img, swapped, scale, ids)
    )


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    cfg = P.PretrainConfig(steps=100, warmup=10, lr=1e-3)
    assert P.lr_at(0, cfg) == pytest.approx(1e-4)
    assert P.lr_at(9, cfg) == pytest.approx(1e-3)
    assert P.lr_at(55, cfg) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.5)))
    assert P.lr_at(99, cfg) < 1e-6 + 1e-3 * 0.001
    assert all(P.lr_at(s, cfg) >= P.lr_at(s + 1, cfg) for s in range(10, 99))


def test_pretraining_batches_are_a_function_of_seed_and_step():
    a_img, a_txt = P.pretraining_batch(0, 5, 16)
    b_img, b_txt = P.pretraining_batch(0, 5, 16)
    c_img, c_txt = P.pretraining_batch(0, 6, 16)
    assert torch.equal(a_img, b_img) and a_txt == b_txt
    assert not torch.equal(a_img, c_img) and a_txt != c_txt


def test_tiny_pretraining_run_lowers_the_loss_and_writes_a_loadable_model_folder(tmp_path, capsys):
    out = tmp_path / "embedded" / "weights.safetensors"
    code = main([
        "pretrain-embedded", "--steps", "40", "--batch-size", "32", "--warmup", "10", "--lr", "1e-3",
        "--eval-per-class", "0", "--threads", "1", "--no-progress", "--out", str(out),
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    # below the untrained model and below log(probe size), the loss of features that carry no information
    assert report["probe_loss_end"] < report["probe_loss_start"] - 0.3, report
    assert report["probe_loss_end"] < math.log(P.PretrainConfig().probe_size) - 0.2, report

    folder = out.parent
    assert json.loads((folder / "config.json").read_text()) == P.embedded_architecture().config
    assert (folder / "vocabulary.txt").read_text().split() == world_captions.vocabulary()
    manifest = (folder / "MANIFEST.md").read_text()
    assert "--steps 40" in manifest and "--seed 0" in manifest and "red star" in manifest  # a held-out pair
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("token_embedding.weight").dtype == torch.float16

    # --rescore keeps the weights and the run's record, and replaces only the zero-shot table
    digest = (out.read_bytes())
    assert main(["pretrain-embedded", "--rescore", "--eval-per-class", "1", "--threads", "1", "--out", str(out)]) == 0
    table = json.loads(capsys.readouterr().out)["zero_shot"]
    assert set(table) == {*world_vocab.VOCABULARIES, world_vocab.FULL_COLOUR_SHAPE.name}
    assert all(0 <= table["colour_shape"][s]["all"] <= 100 for s in world_render.STYLES)
    rescored = (folder / "MANIFEST.md").read_text()
    assert "--steps 40" in rescored and "Re-scored" in rescored and "| colour_shape | 36 |" in rescored
    assert out.read_bytes() == digest

    from tailprompt.backbone import load_backbone

    vlm = load_backbone("embedded", weights=str(out))  # strict load: every key present, none extra
    with safe_open(str(out), "pt") as f:
        saved = f.get_tensor("text_projection").float()
    assert torch.equal(vlm.model.text_projection.detach(), saved)


def test_bad_output_path_is_a_user_error(tmp_path, capsys):
    assert main(["pretrain-embedded", "--steps", "1", "--out", str(tmp_path / "w.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_shipped_weights_load_and_classify_zero_shot_far_above_chance():
    from tailprompt.backbone import load_backbone

    assert P.DEFAULT_WEIGHTS.is_file(), "run `tailprompt pretrain-embedded` to build the shipped weights"
    assert P.DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random weights" fallback, no unknown-word warning
        vlm = load_backbone("embedded")
        ds = load_dataset("world_colour_shape_clean", None, {})
        text = vlm.tokenize([ds.template.format(c) for c in ds.classnames])
    assert "sha256" in vlm.identity and vlm.context_length == 32
    items = ds.test[: 10 * ds.num_classes]
    with torch.no_grad():
        img = F.normalize(vlm.encode_image(ds.load_batch(items, vlm.preprocess_eval)), dim=-1)
        txt = F.normalize(vlm.encode_text(text), dim=-1)
    labels = torch.tensor([it.label for it in items])
    acc = float(((img @ txt.t()).argmax(1) == labels).float().mean())
    assert acc > 10 / ds.num_classes, f"zero-shot accuracy {acc:.3f} vs chance {1 / ds.num_classes:.3f}"
    with pytest.warns(UserWarning, match="zebra"):
        vlm.tokenize(["a photo of a zebra."])
