"""The embedded ViT: a student that shares the teacher's text tower, a tiny distillation that learns, and the
shipped weights (a ViT in the same embedding space as `embedded`, far above chance zero-shot)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from tailprompt.backbone import load_backbone
from tailprompt.backbone.architectures import embedded_vit_weights_path
from tailprompt.cli import main
from tailprompt.data.registry import load_dataset
from tailprompt.world import captions as world_captions
from tailprompt.world import distill as D

PROMPTS = ["a photo of a large red circle.", "a photo of a small blue star.", "a green heart."]


@pytest.fixture(scope="module")
def teacher():
    return load_backbone("embedded", precision="fp32")


def test_the_student_is_a_vit_with_the_teachers_text_tower_and_trains_only_its_image_tower(teacher):
    student = D.student_from_teacher(teacher, seed=0)
    assert student.has_vit and not teacher.has_vit
    assert student.logit_scale == teacher.logit_scale
    tokens = teacher.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(student.encode_text(tokens), teacher.encode_text(tokens))
    trainable = {n for n, p in student.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.") for n in trainable)
    assert trainable == {n for n, _ in student.model.visual.named_parameters(prefix="visual")}


def test_distillation_loss_is_zero_for_parallel_features_and_half_the_mse_of_unit_vectors():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert float(D.distillation_loss(3 * t, t)) == pytest.approx(0, abs=1e-6)
    mse = ((F.normalize(s, dim=-1) - F.normalize(t, dim=-1)) ** 2).sum(-1).mean()
    assert torch.allclose(D.distillation_loss(s, t), mse / 2, atol=1e-6)


def test_tiny_distillation_run_lowers_the_loss_and_writes_a_loadable_vit_folder(teacher, tmp_path, capsys):
    out = tmp_path / "embedded_vit" / "weights.safetensors"
    assert main([
        "pretrain-embedded", "--vision", "vit", "--steps", "30", "--batch-size", "16", "--warmup", "5",
        "--lr", "2e-3", "--text-weight", "0.1", "--eval-per-class", "0", "--threads", "1", "--no-progress",
        "--out", str(out),
    ]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["probe_loss_end"] < report["probe_loss_start"] - 0.2, report

    folder = out.parent
    assert json.loads((folder / "config.json").read_text()) == D.vit_architecture().config
    assert (folder / "vocabulary.txt").read_text().split() == world_captions.vocabulary()
    manifest = (folder / "MANIFEST.md").read_text()
    assert "--vision vit" in manifest and "--steps 30" in manifest and "--text-weight 0.1" in manifest
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("visual.conv1.weight").dtype == torch.float16
    vlm = load_backbone("embedded-vit", weights=str(out))  # strict load: every key present, none extra
    assert vlm.has_vit
    tokens = teacher.tokenize(PROMPTS)
    with torch.no_grad():  # the shipped fp16 text tower round-trips exactly
        assert torch.equal(vlm.encode_text(tokens), teacher.encode_text(tokens))


def test_text_weight_and_teacher_are_user_errors_for_the_conv_clip(tmp_path, capsys):
    out = str(tmp_path / "w.safetensors")
    assert main(["pretrain-embedded", "--steps", "1", "--text-weight", "1", "--out", out]) == 2
    assert "--vision vit" in capsys.readouterr().err
    missing = tmp_path / "none.safetensors"
    argv = ["pretrain-embedded", "--vision", "vit", "--teacher", str(missing), "--out", str(tmp_path / "w.safetensors")]
    assert main(argv) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def _zero_shot_accuracy(vlm, dataset: str, per_class: int) -> float:
    ds = load_dataset(dataset, None, {})
    items = [it for c in range(ds.num_classes) for it in [i for i in ds.test if i.label == c][:per_class]]
    with torch.no_grad():
        img = F.normalize(vlm.encode_image(ds.load_batch(items, vlm.preprocess_eval)), dim=-1)
        txt = F.normalize(vlm.encode_text(vlm.tokenize([ds.template.format(c) for c in ds.classnames])), dim=-1)
    labels = torch.tensor([it.label for it in items])
    return float(((img @ txt.t()).argmax(1) == labels).float().mean())


def test_shipped_vit_shares_the_embedded_text_tower_and_classifies_zero_shot_far_above_chance(teacher):
    weights = embedded_vit_weights_path()
    assert weights.is_file(), "run `tailprompt pretrain-embedded --vision vit` to build the shipped weights"
    assert weights.stat().st_size <= 20 * 2**20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random weights" fallback, no unknown-word warning
        vlm = load_backbone("embedded-vit")
        tokens = vlm.tokenize(PROMPTS)
    assert vlm.has_vit and "sha256" in vlm.identity and vlm.context_length == teacher.context_length
    assert vlm.logit_scale == teacher.logit_scale
    with torch.no_grad():
        assert torch.equal(vlm.encode_text(tokens), teacher.encode_text(tokens))
    # `world`'s 72 classes, 3 images each: chance is 1.4%; the shipped ViT scores 59.1% on 50 per class
    # (MANIFEST.md, size_colour_shape_by_shape noisy; 58.8% on these 216 images, the conv tower 56.5%);
    # 0.45 is ~4 sampling std below and 32x chance.
    acc = _zero_shot_accuracy(vlm, "world", per_class=3)
    assert acc > 0.45, f"zero-shot accuracy {acc:.3f} vs chance {1 / 72:.3f}"


def test_training_views_replace_the_first_share_of_a_batch_deterministically():
    from tailprompt.world.pretrain import pretraining_batch
    from tailprompt.world.render import seeded_generator

    images, _ = pretraining_batch(0, 0, 8)
    views = D.training_views(images, 0.5, seeded_generator("t", 1))
    assert views.shape == images.shape and views.dtype == torch.uint8
    assert torch.equal(views[4:], images[4:]) and not torch.equal(views[:4], images[:4])
    assert torch.equal(views, D.training_views(images, 0.5, seeded_generator("t", 1)))
    assert torch.equal(D.training_views(images, 0.0, seeded_generator("t", 1)), images)
    gen = seeded_generator("boxes")
    for _ in range(200):
        top, left, h, w = D.crop_box(32, 32, (0.6, 1.0), gen)
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w and 0.6 * 1024 * 0.9 <= h * w <= 1024


def test_noisy_rows_add_the_noisy_styles_noise_to_a_drawn_share_of_a_batch():
    from tailprompt.world.pretrain import pretraining_batch
    from tailprompt.world.render import NOISE_SIGMA, seeded_generator

    images, _ = pretraining_batch(0, 0, 64)
    noisy = D.noisy_rows(images, 0.25, seeded_generator("n", 1))
    assert noisy.shape == images.shape and noisy.dtype == torch.uint8
    changed = (noisy != images).flatten(1).any(1)
    assert int(changed.sum()) == 16 and not torch.equal(changed[:16], torch.ones(16, dtype=torch.bool))
    diff = (noisy.float() - images.float())[changed] / 255
    inside = (images[changed] > 12) & (images[changed] < 243)  # away from the clamp at 0 and 255
    assert abs(float(diff[inside].std()) - NOISE_SIGMA) < 0.004 and abs(float(diff[inside].mean())) < 0.002
    assert torch.equal(noisy, D.noisy_rows(images, 0.25, seeded_generator("n", 1)))
    assert torch.equal(D.noisy_rows(images, 0.0, seeded_generator("n", 1)), images)


@pytest.mark.parametrize("flag, field", [("--augment-fraction", "augment_fraction"),
                                         ("--noisy-fraction", "noisy_fraction")])
def test_the_batch_shares_are_for_the_vit_and_a_share(flag, field, tmp_path, capsys):
    out = str(tmp_path / "w.safetensors")
    assert main(["pretrain-embedded", "--steps", "1", flag, "0.5", "--out", out]) == 2
    assert flag in capsys.readouterr().err
    assert main(["pretrain-embedded", "--vision", "vit", "--steps", "1", flag, "1.5", "--out", out]) == 2
    assert f"{field} must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("args, culprit", [(["--images", "0"], "--images"),
                                           (["--vit-weights", "missing.safetensors"], "--vit-weights")])
def test_view_stability_benchmark_refuses_bad_input_in_one_line(args, culprit, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "view_stability.py"
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert culprit in done.stderr and "Traceback" not in done.stderr
