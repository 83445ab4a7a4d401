"""Augmentation as data: the CoOp recipe stays the backbone's own transform; others keep more of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tailprompt.data import load_dataset
from tailprompt.data.augment import COOP_AUGMENT, Augment, augment_id, resolve_augment, train_transform
from tailprompt.data.features import FeatureCache
from tailprompt.engine.run_config import DataConfig
from tailprompt.schema import ConfigError, from_dict
from tailprompt.testing.trees import make_eurosat_tree


@pytest.fixture(scope="module")
def tiny():
    from tailprompt.backbone import load_backbone

    return load_backbone("tiny-vit")


def _views(transform, image: Image.Image, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.stack([transform(image) for _ in range(n)])


def _ramp() -> Image.Image:
    grid = np.add.outer(np.arange(64), np.arange(64)).astype(np.float32)
    return Image.fromarray((255 * grid / grid.max()).astype(np.uint8)).convert("RGB")


def test_the_coop_recipe_is_the_backbones_own_train_transform_bit_for_bit(tiny):
    assert COOP_AUGMENT == Augment(crop_scale=(0.08, 1.0), flip=True)
    assert train_transform(tiny, COOP_AUGMENT) is tiny.preprocess_train
    # the configurable path, given the CoOp numbers, draws exactly the same views
    rebuilt = tiny.train_preprocess((0.08, 1.0), True)
    assert torch.equal(_views(rebuilt, _ramp(), 8), _views(tiny.preprocess_train, _ramp(), 8))


def test_a_gentler_crop_keeps_more_of_the_image_and_flip_can_be_off(tiny):
    ramp = _ramp()
    full = tiny.preprocess_eval(ramp)[0]
    spread = {}
    for lo in (0.08, 0.8):
        views = _views(train_transform(tiny, Augment(crop_scale=(lo, 1.0), flip=False)), ramp, 24)[:, 0]
        spread[lo] = float((views.amax(dim=(1, 2)) - views.amin(dim=(1, 2))).mean())
        # without flips the ramp always rises left to right
        assert bool((views[:, 16, -1] >= views[:, 16, 0]).all())
    full_spread = float(full.max() - full.min())
    assert spread[0.8] > 0.8 * full_spread > spread[0.08]


def test_resolution_order_config_then_dataset_then_coop_and_bad_ranges_name_the_field():
    world = Augment(crop_scale=(0.6, 1.0))
    mine = Augment(crop_scale=(0.3, 0.9), flip=False)
    assert resolve_augment(None, None) == COOP_AUGMENT
    assert resolve_augment(None, world) == world
    assert resolve_augment(mine, world) == mine
    assert augment_id(mine) == "rrc0.3-0.9" and augment_id(COOP_AUGMENT) == "rrc0.08-1+hflip"
    cfg = from_dict(DataConfig, {"augment": {"crop_scale": [0.5, 1.0]}})
    assert cfg.augment == Augment(crop_scale=(0.5, 1.0), flip=True)
    with pytest.raises(ConfigError, match="augment.*crop_scale"):
        from_dict(DataConfig, {"augment": {"crop_scale": [0.0, 1.0]}}, "data")


def test_real_datasets_default_to_coop_and_the_world_to_a_gentler_crop(tmp_path):
    import tailprompt.world  # noqa: F401  (registers the world datasets)

    eurosat = load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=3))
    assert eurosat.augment is None and resolve_augment(None, eurosat.augment) == COOP_AUGMENT
    world = load_dataset("world", None, {})
    assert world.augment is not None and world.augment.crop_scale[0] >= 0.5


def test_augmentation_is_part_of_the_cache_key_except_for_the_coop_recipe(tiny, tmp_path):
    eurosat = load_dataset("eurosat", make_eurosat_tree(tmp_path / "data", images_per_class=3))
    cache = FeatureCache(tmp_path / "cache")
    gentle = Augment(crop_scale=(0.6, 1.0))
    assert cache.space_dir(tiny) == cache.space_dir(tiny, COOP_AUGMENT)  # existing caches stay valid
    assert cache.space_dir(tiny, gentle) != cache.space_dir(tiny)
    items = eurosat.train[:4]
    coop_view = cache.get(tiny, eurosat, items, view=1)
    gentle_view = cache.get(tiny, eurosat, items, view=1, augment=gentle)
    assert cache.misses == 8 and not torch.allclose(coop_view, gentle_view)
    assert torch.equal(cache.get(tiny, eurosat, items, view=1, augment=gentle), gentle_view)
    assert "rrc0.6-1+hflip" in (cache.space_dir(tiny, gentle) / "key.json").read_text()
