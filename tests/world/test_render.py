"""World rendering: styles change pixels not scenes; classes are visible in the pixels."""

from __future__ import annotations

import torch

from tailprompt.world import datasets as world_datasets
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab


def test_styles_render_the_same_scene():
    vocab = world_vocab.VOCABULARIES["colour_shape"]
    clean = world_datasets.WorldRenderer(vocab, "clean", seed=0).scenes("test", 0)
    sketch = world_datasets.WorldRenderer(vocab, "sketch", seed=0).scenes("test", 0)
    assert torch.equal(clean.center, sketch.center) and torch.equal(clean.shape, sketch.shape)
    imgs = {s: world_datasets.WorldRenderer(vocab, s, seed=0).chunk("test", 0).float() for s in world_render.STYLES}
    for s in ("noisy", "blurred", "sketch"):
        assert (imgs[s] - imgs["clean"]).abs().mean() > 3  # the style really changes the pixels


def test_classes_are_distinguishable_by_a_nearest_class_mean_probe():
    vocab = world_vocab.VOCABULARIES["colour_shape"]
    train, y_train = world_datasets.render_split(vocab, "clean", "train", 0, 32)
    test, y_test = world_datasets.render_split(vocab, "clean", "test", 0, 10)

    def feats(x: torch.Tensor) -> torch.Tensor:
        # position-free pixel statistics: mean colour of the brightest-saturation pixels + a coverage count
        x = x.float().view(len(x), -1, 3) / 255
        sat = x.max(dim=2).values - x.min(dim=2).values
        top = sat.topk(40, dim=1).indices
        colour = x.gather(1, top.unsqueeze(-1).expand(-1, -1, 3)).mean(dim=1)
        area = (sat > 0.3).float().mean(dim=1, keepdim=True)
        return torch.cat([colour, area], dim=1)

    ftr, fte = feats(train), feats(test)
    means = torch.stack([ftr[y_train == k].mean(0) for k in range(36)])
    acc = float((torch.cdist(fte, means).argmin(1) == y_test).float().mean())
    assert acc > 4 / 36, f"nearest class mean accuracy {acc:.3f} is too close to chance {1 / 36:.3f}"
