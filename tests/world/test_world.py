"""The procedural world: deterministic rendering, learnable classes, captions that fit, datasets that load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from tailprompt.config import ConfigError
from tailprompt.data import world
from tailprompt.data.registry import DATASETS, load_dataset

CONTEXT = 32


def _pixels(ds, items) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(ds.load_image(it))) for it in items])


def test_rendering_is_deterministic_per_seed_and_differs_across_seeds():
    a = load_dataset("world_colour_shape_clean", None, {"seed": 3})
    b = load_dataset("world_colour_shape_clean", None, {"seed": 3})
    c = load_dataset("world_colour_shape_clean", None, {"seed": 4})
    items = a.test[:5] + a.test[300:303]
    assert torch.equal(_pixels(a, items), _pixels(b, items))
    other = [c.test[i] for i in (0, 1, 2, 3, 4, 300, 301, 302)]
    assert not torch.equal(_pixels(a, items), _pixels(c, other))
    # identities name generator spec, seed and index, so the feature cache keeps seeds apart
    assert a.image_identity(items[0]) != c.image_identity(other[0])
    assert a.image_identity(items[0]) == b.image_identity(items[0])


def test_splits_are_disjoint_scenes_and_load_image_matches_batch_rendering():
    ds = load_dataset("world_size_colour_shape_noisy", None, {})
    train, labels = world.render_split(world.VOCABULARIES["size_colour_shape"], "noisy", "train", 0, 32)
    assert train.shape == (32 * 32, 32, 32, 3) and torch.equal(labels[:40], torch.arange(40) % 32)
    for idx in (0, 257, 1000):
        img = ds.load_image(ds.train[idx])
        assert img.mode == "RGB" and img.size == (32, 32)
        assert torch.equal(torch.from_numpy(np.array(img)), train[idx])
    test, _ = world.render_split(world.VOCABULARIES["size_colour_shape"], "noisy", "test", 0, 1)
    assert not torch.equal(test[:32], train[:32])


def test_styles_render_the_same_scene():
    vocab = world.VOCABULARIES["colour_shape"]
    clean = world.WorldRenderer(vocab, "clean", seed=0).scenes("test", 0)
    sketch = world.WorldRenderer(vocab, "sketch", seed=0).scenes("test", 0)
    assert torch.equal(clean.center, sketch.center) and torch.equal(clean.shape, sketch.shape)
    imgs = {s: world.WorldRenderer(vocab, s, seed=0).chunk("test", 0).float() for s in world.STYLES}
    for s in ("noisy", "blurred", "sketch"):
        assert (imgs[s] - imgs["clean"]).abs().mean() > 3  # the style really changes the pixels


def test_classes_are_distinguishable_by_a_nearest_class_mean_probe():
    vocab = world.VOCABULARIES["colour_shape"]
    train, y_train = world.render_split(vocab, "clean", "train", 0, 32)
    test, y_test = world.render_split(vocab, "clean", "test", 0, 10)

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


def test_every_registered_world_dataset_has_the_promised_shape():
    names = DATASETS.names("world*")
    assert "world" in names and set(world.dataset_names()) <= set(names)
    assert len(world.dataset_names()) == len(world.VOCABULARIES) * len(world.STYLES)
    for name in ("world", "world_texture_shape_blurred"):
        ds = load_dataset(name, "/does/not/matter", {})
        k = ds.num_classes
        assert 20 <= k <= 40
        assert len(ds.train) == 32 * k and len(ds.val) == 8 * k and len(ds.test) >= 100 * k
        assert all(it.key.startswith("world:") for it in ds.train[:3])
        per_class = torch.bincount(torch.tensor([it.label for it in ds.test]), minlength=k)
        assert int(per_class.min()) >= 100
        assert "{}" in ds.template and ds.root is None
        assert {it.domain for it in ds.test[:50]} == {ds.domain}
    assert load_dataset("world", None, {}).name == world.DEFAULT_DATASET
    assert world.DEFAULT_DATASET.rsplit("_", 1)[1] != world.PRETRAIN_STYLE  # tuning has a shift to learn


def test_base_and_new_halves_cover_every_attribute_and_new_colour_shape_pairs_are_held_out():
    for vocab in world.VOCABULARIES.values():
        classes, nb = vocab.classes(), vocab.num_base()
        for attr in vocab.phrase:
            values = set(vocab.values[attr])
            assert {c[attr] for c in classes[:nb]} == values
            assert {c[attr] for c in classes[nb:]} == values
    held = world.held_out_pairs()
    assert len(held) == 18
    for name in ("colour_shape", "size_colour_shape"):
        vocab = world.VOCABULARIES[name]
        classes = vocab.classes()
        assert all((c["colour"], c["shape"]) in held for c in classes[vocab.num_base():])
        assert not any((c["colour"], c["shape"]) in held for c in classes[: vocab.num_base()])
    allowed = {tuple(p) for p in world.pretraining_pairs().tolist()}
    assert not allowed & held and len(allowed) + len(held) == len(world.COLOURS) * len(world.SHAPES)
    scenes = world.sample_scenes(2000, torch.Generator().manual_seed(0), pairs=world.pretraining_pairs())
    drawn = set(zip(scenes.colour.tolist(), scenes.shape.tolist()))
    assert not drawn & held


def test_class_names_are_natural_phrases():
    assert world.VOCABULARIES["colour_shape"].classnames()[0] == "red circle"
    assert "striped square" in world.VOCABULARIES["texture_shape"].classnames()
    assert "large blue triangle" in world.VOCABULARIES["size_colour_shape"].classnames()


def test_captions_tokenize_within_the_context_and_use_only_vocabulary_words():
    tok = SimpleTokenizer(context_length=CONTEXT)
    vocab = set(world.vocabulary())
    rng = random.Random(0)
    scenes = world.sample_scenes(3000, torch.Generator().manual_seed(1))
    caps = world.captions(scenes, rng)
    assert len(set(caps)) > 1000  # varied, not a handful of strings
    for cap in caps:
        assert set(world.words_of(cap)) <= vocab, cap
    longest = max(len(tok.encode(c)) for c in caps)
    # worst case over every template and the longest wording of every slot (BPE splits on spaces)
    def n(text: str) -> int:
        return len(tok.encode(text))

    templates = max(n(t.replace("{}", "")) for t in (*world.CAPTION_TEMPLATES, *world.BACKGROUND_TEMPLATES))
    slot = {a: max(n(w) for v in vals for w in world.SYNONYMS.get(v, (v,))) for a, vals in world.ATTRIBUTES.items()}
    texture = max(slot["texture"], max(n(p) for p in world.TEXTURE_AFTER_NOUN.values()))
    noun = max(slot["shape"], max(n(w) for w in world.GENERIC_NOUNS))
    bound = templates + slot["size"] + slot["colour"] + texture + noun + slot["background"]
    assert longest <= bound and bound + 2 <= CONTEXT  # + start and end tokens
    # attributes are dropped at random: some captions name no colour
    colours = {w for c in world.COLOURS for w in world.SYNONYMS.get(c, (c,))}
    assert any(not colours & set(world.words_of(c)) for c in caps)


def test_class_prompts_fit_with_16_context_vectors():
    tok = SimpleTokenizer(context_length=CONTEXT)
    for vocab in world.VOCABULARIES.values():
        for name in vocab.classnames():
            assert 16 + len(tok.encode(vocab.template.format(name))) + 2 <= CONTEXT


def test_bad_options_and_foreign_keys_are_errors_naming_the_problem():
    with pytest.raises(ConfigError, match="test_per_clas"):
        load_dataset("world", None, {"test_per_clas": 5})
    with pytest.raises(ConfigError, match="train_per_class"):
        load_dataset("world", None, {"train_per_class": 0})
    ds = load_dataset("world_colour_shape_clean", None, {})
    other = load_dataset("world_colour_shape_noisy", None, {})
    with pytest.raises(ValueError, match="does not belong"):
        ds.load_image(other.test[0])


def test_the_render_cache_stays_small_and_serves_repeated_loads():
    renderer = world.WorldRenderer(world.VOCABULARIES["texture_shape"], "clean", seed=0, cache_chunks=2)
    first = renderer.chunk("test", 0)
    assert renderer.chunk("test", 0) is first  # a second item of the same chunk renders nothing
    for c in range(1, 6):
        renderer.chunk("test", c)
    assert len(renderer._cache) == 2
    assert torch.equal(renderer.chunk("test", 0), first)  # re-rendered identically after eviction
