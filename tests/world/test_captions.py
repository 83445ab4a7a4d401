"""Captions: varied, inside the closed vocabulary, within the text context."""

from __future__ import annotations

import random

import torch
from open_clip.tokenizer import SimpleTokenizer

from tailprompt.world import captions as world_captions
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab

CONTEXT = 32


def test_captions_tokenize_within_the_context_and_use_only_vocabulary_words():
    tok = SimpleTokenizer(context_length=CONTEXT)
    vocab = set(world_captions.vocabulary())
    rng = random.Random(0)
    scenes = world_render.sample_scenes(3000, torch.Generator().manual_seed(1))
    caps = world_captions.captions(scenes, rng)
    assert len(set(caps)) > 1000  # varied, not a handful of strings
    for cap in caps:
        assert set(world_captions.words_of(cap)) <= vocab, cap
    longest = max(len(tok.encode(c)) for c in caps)
    # worst case over every template and the longest wording of every slot (BPE splits on spaces)
    def n(text: str) -> int:
        return len(tok.encode(text))

    all_templates = (*world_captions.CAPTION_TEMPLATES, *world_captions.BACKGROUND_TEMPLATES)
    templates = max(n(t.replace("{}", "")) for t in all_templates)
    slot = {
        a: max(n(w) for v in vals for w in world_captions.SYNONYMS.get(v, (v,)))
        for a, vals in world_render.ATTRIBUTES.items()
    }
    texture = max(slot["texture"], max(n(p) for p in world_captions.TEXTURE_AFTER_NOUN.values()))
    noun = max(slot["shape"], max(n(w) for w in world_captions.GENERIC_NOUNS))
    bound = templates + slot["size"] + slot["colour"] + texture + noun + slot["background"]
    assert longest <= bound and bound + 2 <= CONTEXT  # + start and end tokens
    # attributes are dropped at random: some captions name no colour
    colours = {w for c in world_render.COLOURS for w in world_captions.SYNONYMS.get(c, (c,))}
    assert any(not colours & set(world_captions.words_of(c)) for c in caps)


def test_class_descriptions_name_every_class_attribute_in_pretrained_words_and_are_deterministic():
    vocab_words = set(world_captions.vocabulary())
    for vocab in world_vocab.VOCABULARIES.values():
        described = world_captions.class_descriptions(vocab, per_class=6)
        assert list(described) == vocab.classnames()
        for attrs in vocab.classes():
            sentences = described[vocab.classname(attrs)]
            assert len(sentences) == len(set(sentences)) == 6
            for text in sentences:
                words = set(world_captions.words_of(text))
                assert words <= vocab_words, text
                for attr in vocab.phrase:  # each class attribute, by its name or a synonym
                    value = world_render.ATTRIBUTES[attr][attrs[attr]]
                    if attr == "texture" and value in world_captions.TEXTURE_AFTER_NOUN:
                        options = {*world_captions.SYNONYMS[value], *world_captions.words_of(
                            world_captions.TEXTURE_AFTER_NOUN[value])}
                    else:
                        options = set(world_captions.SYNONYMS.get(value, (value,)))
                    assert words & options, (text, attr, value)
        assert world_captions.class_descriptions(vocab, per_class=6) == described
        assert world_captions.class_descriptions(vocab, per_class=6, seed=1) != described
