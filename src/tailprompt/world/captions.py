"""Captions of world scenes (contrastive pretraining text) and the world's closed word list."""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Mapping

from tailprompt.utils import stable_hash
from tailprompt.world.render import ATTRIBUTES, BACKGROUNDS, COLOURS, SHAPES, SIZES, TEXTURES, Scenes
from tailprompt.world.vocab import VOCABULARIES, LabelVocab

# Canonical word first; the captioner picks it with probability CANONICAL_P, else a synonym.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus"),
    "diamond": ("diamond", "rhombus"),
    "ring": ("ring", "donut"),
    "gray": ("gray", "grey"),
    "purple": ("purple", "violet"),
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
    "checkered": ("checkered", "checked", "chequered"),
    "dark": ("dark", "black"),
    "light": ("light", "white"),
    "speckled": ("speckled", "grainy"),
    "gradient": ("gradient", "shaded"),
}
TEXTURE_AFTER_NOUN = {
    "striped": "with stripes", "dotted": "with dots", "checkered": "with a checkered pattern",
}
GENERIC_NOUNS = ("shape", "object", "thing")
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a rendering of a {}.",
    "a close up photo of a {}.",
    "there is a {} in the image.",
    "this is a {}.",
    "the {}.",
)
BACKGROUND_TEMPLATES = (
    "a photo of a {} on a {} background.",
    "a {} on a {} background.",
    "a picture of a {} in front of a {} background.",
)
CANONICAL_P = 0.7
KEEP_P = {"colour": 0.85, "size": 0.5, "texture": 0.5, "background": 0.3}
GENERIC_NOUN_P = 0.08


def _word(canonical: str, rng: random.Random) -> str:
    options = SYNONYMS.get(canonical, (canonical,))
    if len(options) == 1 or rng.random() < CANONICAL_P:
        return canonical
    return rng.choice(options[1:])


def caption(attrs: Mapping[str, int], rng: random.Random, keep: Collection[str] = ()) -> str:
    """One caption for a scene's attributes, e.g. "a photo of a big red striped circle."

    Attributes are dropped at random (`KEEP_P`), words replaced by synonyms, and the wording drawn
    from `CAPTION_TEMPLATES` (the zero-shot template "a photo of a {}." is the most frequent), so
    the text tower learns each attribute word on its own, not just whole class names. Attributes in
    `keep` are always named (class descriptions); the random draws are the same with or without it.
    """
    shape = SHAPES[attrs["shape"]]
    generic = rng.random() < GENERIC_NOUN_P and "shape" not in keep
    noun = rng.choice(GENERIC_NOUNS) if generic else _word(shape, rng)
    words: list[str] = []
    if rng.random() < KEEP_P["size"] or "size" in keep:
        words.append(_word(SIZES[attrs["size"]], rng))
    if rng.random() < KEEP_P["colour"] or "colour" in keep:
        words.append(_word(COLOURS[attrs["colour"]], rng))
    texture = TEXTURES[attrs["texture"]]
    after = ""
    keep_texture = rng.random() < KEEP_P["texture"] * (0.5 if texture == "solid" else 1.0) or "texture" in keep
    if keep_texture and texture in TEXTURE_AFTER_NOUN and rng.random() < 0.3:
        after = " " + TEXTURE_AFTER_NOUN[texture]
    elif keep_texture:
        words.append(_word(texture, rng))
    desc = " ".join([*words, noun]) + after
    if rng.random() < KEEP_P["background"]:
        bg = _word(BACKGROUNDS[attrs["background"]], rng)
        return rng.choice(BACKGROUND_TEMPLATES).format(desc, bg)
    return rng.choice(CAPTION_TEMPLATES).format(desc)


def captions(scenes: Scenes, rng: random.Random) -> list[str]:
    return [caption(scenes.attributes(i), rng) for i in range(len(scenes))]


def class_descriptions(vocab: LabelVocab, per_class: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """{classname: [sentence, ...]}: `per_class` distinct sentences describing each class, in the world's words.

    The world's answer to CoPrompt's LLM descriptions (its `gpt_file` format): captions of scenes of the
    class that always name the class's attributes (with synonyms) and add others a scene of it may have
    (size, texture, background), so every word is one the embedded model was pretrained on. Deterministic
    given (vocabulary, class, seed).
    """
    out: dict[str, list[str]] = {}
    for attrs in vocab.classes():
        name = vocab.classname(attrs)
        rng = random.Random(int(stable_hash(["descriptions", vocab.name, name, seed], length=15), 16))
        sentences: list[str] = []
        for _ in range(50 * per_class):  # a bounded number of draws: a tiny vocabulary may repeat
            scene = {a: attrs.get(a, rng.randrange(len(values))) for a, values in ATTRIBUTES.items()}
            text = caption(scene, rng, keep=vocab.phrase)
            if text not in sentences:
                sentences.append(text)
            if len(sentences) == per_class:
                break
        out[name] = sentences
    return out


def words_of(text: str) -> list[str]:
    """Lower-case words of a text (how the vocabulary file is built)."""
    return re.findall(r"[a-z]+", text.lower())


def vocabulary() -> list[str]:
    """Every word a caption, class name or dataset template of the world can contain, sorted."""
    words: set[str] = set()
    for values in ATTRIBUTES.values():
        for value in values:
            words.update(SYNONYMS.get(value, (value,)))
    for text in (*CAPTION_TEMPLATES, *BACKGROUND_TEMPLATES, *TEXTURE_AFTER_NOUN.values(), *GENERIC_NOUNS):
        words.update(words_of(text.replace("{}", "")))
    for vocab in VOCABULARIES.values():
        for name in vocab.classnames():
            words.update(words_of(name))
        words.update(words_of(vocab.template.replace("{}", "")))
    return sorted(words)

