"""Dassl's RandAugment training views (CoPrompt's `INPUT.TRANSFORMS: [randaugment, normalize]`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from tailprompt.backbone.transforms import (
    RANDAUGMENT_OPS,
    RandAugment,
    preprocess_id,
    train_transform,
)
from tailprompt.data.augment import Augment, augment_id
from tailprompt.data.augment import train_transform as augment_train_transform
from tailprompt.data.loading import seeded_transform
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache
from tailprompt.schema import ConfigError

OPS = {op.__name__.lstrip("_"): (op, lo, hi) for op, lo, hi in RANDAUGMENT_OPS}


def picture(w=40, h=30, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def at_m10(name):
    """Dassl's `val = (m / 30) * (max - min) + min` at the default m = 10."""
    _, lo, hi = OPS[name]
    return (10 / 30) * (hi - lo) + lo


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_the_sixteen_operations_in_dasslss_order_and_ranges():
    assert list(OPS) == [
        "auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
        "contrast", "brightness", "sharpness", "shear_x", "shear_y", "cutout_abs", "translate_x_abs",
        "translate_y_abs",
    ]
    assert at_m10("rotate") == pytest.approx(10) and int(at_m10("posterize")) == 5
    assert at_m10("color") == pytest.approx(0.7) and at_m10("translate_x_abs") == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("auto_contrast", lambda img, v: ImageOps.autocontrast(img)),
        ("equalize", lambda img, v: ImageOps.equalize(img)),
        ("invert", lambda img, v: ImageOps.invert(img)),
        ("posterize", lambda img, v: ImageOps.posterize(img, 5)),
        ("solarize", lambda img, v: ImageOps.solarize(img, v)),
        ("color", lambda img, v: ImageEnhance.Color(img).enhance(0.7)),
        ("contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(0.7)),
        ("brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(0.7)),
        ("sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(0.7)),
    ],
)
def test_unsigned_operations_equal_pil_at_dassls_magnitude(name, expected):
    img = picture()
    op = OPS[name][0]
    assert same(op(img, at_m10(name)), expected(img, at_m10(name)))


def test_solarize_add_adds_then_solarizes_above_128():
    img = Image.fromarray(np.array([[[10, 100, 250]]], dtype=np.uint8))
    out = np.asarray(OPS["solarize_add"][0](img, at_m10("solarize_add")))  # + 36.67, clipped, then invert >= 128
    assert out.tolist() == [[[46, 255 - 136, 255 - 255]]]


@pytest.mark.parametrize(
    ("name", "coeffs"),
    [
        ("shear_x", lambda v: (1, v, 0, 0, 1, 0)),
        ("shear_y", lambda v: (1, 0, 0, v, 1, 0)),
        ("translate_x_abs", lambda v: (1, 0, v, 0, 1, 0)),
        ("translate_y_abs", lambda v: (1, 0, 0, 0, 1, v)),
    ],
)
def test_signed_affine_operations_take_either_sign(name, coeffs):
    img, v = picture(80, 80), at_m10(name)  # larger than the 33 px shift, so the two signs differ
    plus, minus = (img.transform(img.size, Image.Transform.AFFINE, coeffs(s * v)) for s in (1, -1))
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = OPS[name][0](img, v)
        assert same(out, plus) or same(out, minus)
        seen.add(same(out, plus))
    assert seen == {True, False}  # both signs occur


def test_rotate_and_cutout():
    img = picture()
    torch.manual_seed(0)
    out = OPS["rotate"][0](img, 10.0)
    assert same(out, img.rotate(10.0)) or same(out, img.rotate(-10.0))
    grey = np.zeros((30, 40, 3), dtype=np.uint8)
    out = np.asarray(OPS["cutout_abs"][0](Image.fromarray(grey), at_m10("cutout_abs")))
    filled = (out == [125, 123, 114]).all(-1)
    assert 0 < filled.sum() <= 15 * 15 and filled.any(0).sum() <= 15  # one square of side <= 13.3 + 1


def test_two_operations_drawn_from_torchs_rng_each_at_magnitude_m():
    img = picture(80, 80)
    for seed in range(8):
        torch.manual_seed(seed)
        got = RandAugment()(img)
        torch.manual_seed(seed)  # replay: two indices with replacement, then each op (and its own draws)
        expected = img
        for index in torch.randint(len(RANDAUGMENT_OPS), (2,)).tolist():
            op, lo, hi = RANDAUGMENT_OPS[index]
            expected = op(expected, (10 / 30) * (hi - lo) + lo)
        assert same(got, expected)
    views = {np.asarray(RandAugment()(img)).tobytes() for _ in range(6)}
    assert len(views) > 1
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(m=31)


def test_train_transform_resizes_both_sides_then_augments():
    tf = train_transform(32, policy="randaugment")
    out = seeded_transform(picture(60, 20), tf, 1)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    crop_flip = "s32-bicubic-eval:resize+center-train:rrc0.08-1+hflip-norm:"
    assert preprocess_id(32).startswith(crop_flip)  # the default key is unchanged: existing caches stay valid
    with pytest.raises(ValueError, match="data.augment.policy"):
        train_transform(32, policy="autoaugment")  # type: ignore[arg-type]


def test_randaugment_is_a_data_augment_policy_keyed_apart_in_the_cache():
    cfg = resolve_config("coprompt", ["backbone.name=tiny-vit"])
    assert cfg.data.augment == Augment(policy="randaugment")  # CoPrompt's preset
    assert augment_id(cfg.data.augment) != augment_id(Augment())
    backbone = BackboneCache().get(cfg.backbone)
    tf = augment_train_transform(backbone, cfg.data.augment)
    assert seeded_transform(picture(60, 20), tf, 1).shape == (3, backbone.image_size, backbone.image_size)
    with pytest.raises(ConfigError, match="policy"):
        resolve_config("maple", ["data.augment.policy=autoaugment"])
