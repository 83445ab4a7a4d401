"""Label vocabularies: base/new halves, held-out pairs, natural class names that fit the context."""

from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer

from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab

CONTEXT = 32


def test_base_and_new_halves_cover_every_attribute_but_a_split_one_and_new_colour_shape_pairs_are_held_out():
    for vocab in world_vocab.VOCABULARIES.values():
        classes, nb = vocab.classes(), vocab.num_base()
        assert len(classes) - nb in (nb, nb - 1)
        for attr in vocab.phrase:
            values = set(vocab.values[attr])
            base, new = {c[attr] for c in classes[:nb]}, {c[attr] for c in classes[nb:]}
            if vocab.split == "values" and attr == vocab.split_attrs[0]:  # new classes bring new words
                assert not base & new and base | new == values
            else:
                assert base == new == values
    held = world_vocab.held_out_pairs()
    assert len(held) == 18
    for name in ("colour_shape", "size_colour_shape"):
        vocab = world_vocab.VOCABULARIES[name]
        classes = vocab.classes()
        assert all((c["colour"], c["shape"]) in held for c in classes[vocab.num_base():])
        assert not any((c["colour"], c["shape"]) in held for c in classes[: vocab.num_base()])
    allowed = {tuple(p) for p in world_vocab.pretraining_pairs().tolist()}
    assert not allowed & held and len(allowed) + len(held) == len(world_render.COLOURS) * len(world_render.SHAPES)
    scenes = world_render.sample_scenes(2000, torch.Generator().manual_seed(0), pairs=world_vocab.pretraining_pairs())
    drawn = set(zip(scenes.colour.tolist(), scenes.shape.tolist()))
    assert not drawn & held


def test_class_names_are_natural_phrases():
    assert world_vocab.VOCABULARIES["colour_shape"].classnames()[0] == "red circle"
    assert "striped square" in world_vocab.VOCABULARIES["texture_shape"].classnames()
    assert "large blue triangle" in world_vocab.VOCABULARIES["size_colour_shape"].classnames()


def test_class_prompts_fit_with_16_context_vectors():
    tok = SimpleTokenizer(context_length=CONTEXT)
    for vocab in world_vocab.VOCABULARIES.values():
        for name in vocab.classnames():
            assert 16 + len(tok.encode(vocab.template.format(name))) + 2 <= CONTEXT


def test_the_by_shape_benchmark_holds_out_shapes_not_just_combinations():
    vocab = world_vocab.VOCABULARIES["size_colour_shape_by_shape"]
    names = vocab.classnames()
    assert len(names) == 72 and vocab.num_base() == 36
    assert names[0] == "small red circle" and names[vocab.num_base()] == "small red star"
    assert not any(n.endswith(("star", "heart", "cross")) for n in names[: vocab.num_base()])

