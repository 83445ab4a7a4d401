"""The embedded world: a seeded procedural vision-language sandbox rendered on the fly.

Images are 32x32 RGB scenes of one object described by attributes (shape, colour, size, texture,
background) plus nuisance jitter (position, rotation, scale, colour gain/tint). A rendering *style*
(clean, noisy, blurred, sketch) plays the role of a domain. A captioner turns attributes into varied
English captions (templates, synonyms, random attribute dropping) for contrastive pretraining of the
embedded CLIP (`tailprompt.pretrain`); downstream *datasets* are label vocabularies over attribute
combinations (`colour_shape`: "red circle", `texture_shape`: "striped square", `size_colour_shape`:
"large blue triangle") crossed with a style, registered as `world_<vocab>_<style>`.

Why this shape: class names carry real semantic structure (classes sharing a colour or a shape are
related), base-to-new splits are held-out attribute combinations, and styles give domain shift, so the
papers' protocols run unchanged on a CPU with no downloads (design §6).

Label order puts a checkerboard half of each vocabulary's attribute grid first, so the base half
(first ceil(K/2) labels) and the new half both cover every attribute value: "new" classes are new
*combinations*. The new halves of `colour_shape` (and hence of `size_colour_shape`) are
`held_out_pairs()`: those colour+shape pairs never occur in pretraining. The sketch style draws an
outline only, so `world_texture_shape_sketch` carries no texture information (a deliberately broken
domain: only the shape half of each label is visible).

Rendering is deterministic: a split is a sequence of images whose index j has class j % K; images are
rendered in chunks of `CHUNK` indices from a generator seeded by (vocabulary, split, seed, chunk), so the
same scene is drawn in every style (styles only change the pixels), and loading one item renders one
chunk (kept in a small per-dataset LRU cache), never a whole split.
"""

from __future__ import annotations

import math
import random
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from tailprompt.config import from_dict
from tailprompt.data.registry import DATASETS
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.utils import stable_hash

RENDER_VERSION = "v2"  # bump when pixels change: it is part of every image identity (feature-cache key)
# Seeds every random stream (scenes, style noise, pretraining batches). Kept apart from RENDER_VERSION so a
# pixel change in one style leaves scenes, other styles and the pretraining data of the shipped weights as
# they were. v2 changed only the noisy style (sigma 0.18 -> 0.08).
STREAM_VERSION = "v1"
IMAGE_SIZE = 32
SUPERSAMPLE = 2  # shapes are rasterised at 64 px and box-filtered to 32 px (anti-aliasing)
CHUNK = 256

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "brown", "gray")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("dark", "light", "speckled", "gradient")
STYLES = ("clean", "noisy", "blurred", "sketch")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "texture": TEXTURES,
    "background": BACKGROUNDS,
}

COLOUR_RGB = (
    (0.86, 0.12, 0.12),  # red
    (0.15, 0.70, 0.20),  # green
    (0.15, 0.30, 0.90),  # blue
    (0.95, 0.85, 0.10),  # yellow
    (0.55, 0.20, 0.75),  # purple
    (0.98, 0.55, 0.05),  # orange
    (0.98, 0.55, 0.75),  # pink
    (0.10, 0.80, 0.85),  # cyan
    (0.50, 0.30, 0.12),  # brown
    (0.58, 0.58, 0.58),  # gray
)
SIZE_RADIUS = ((0.30, 0.36), (0.52, 0.62))  # object radius range in half-image units, per size
TEXTURE_PERIOD = 0.30  # pattern period in half-image units (~5 px), fixed so small objects show texture too
NOISE_SIGMA = 0.08  # at 0.18 the embedded model is at chance (10.7% on colour_shape); 0.08 is a real but fair shift
BLUR_SIGMA = 1.0  # 5x5 Gaussian
MAX_ROTATION = math.radians(15.0)  # small, so a square never turns into a diamond

PRETRAIN_STYLE = "clean"
DEFAULT_DATASET = "world_colour_shape_sketch"
TEMPLATE = "a photo of a {}."


# --------------------------------------------------------------------------------------------
# Scenes and rendering


@dataclass(frozen=True)
class Scenes:
    """A batch of N scene descriptions: attribute indices [N] (long) and nuisance jitter."""

    shape: torch.Tensor
    colour: torch.Tensor
    size: torch.Tensor
    texture: torch.Tensor
    background: torch.Tensor
    center: torch.Tensor  # [N, 2] (x, y) in [-1, 1], y up
    angle: torch.Tensor  # [N] radians
    radius: torch.Tensor  # [N] half-image units
    gain: torch.Tensor  # [N] brightness factor
    tint: torch.Tensor  # [N, 3] additive colour jitter

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def attributes(self, i: int) -> dict[str, int]:
        """Attribute indices of scene i, e.g. {"shape": 0, "colour": 3, ...}."""
        return {name: int(getattr(self, name)[i]) for name in ATTRIBUTES}


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def sample_scenes(
    n: int,
    gen: torch.Generator,
    fixed: Mapping[str, torch.Tensor] | None = None,
    pairs: torch.Tensor | None = None,
) -> Scenes:
    """Draw n scenes: attributes in `fixed` ([n] long each) are kept, the others uniform.

    `pairs` ([P, 2] long of (colour, shape)) restricts the colour+shape combination to those rows
    (pretraining uses it to hold combinations out). Every random draw happens in a fixed order, so
    a seeded generator gives the same scenes whatever is fixed.
    """
    fixed = dict(fixed or {})
    drawn = {name: torch.randint(len(values), (n,), generator=gen) for name, values in ATTRIBUTES.items()}
    pair_idx = torch.randint(len(pairs) if pairs is not None else 1, (n,), generator=gen)
    if pairs is not None:
        drawn["colour"], drawn["shape"] = pairs[pair_idx, 0], pairs[pair_idx, 1]
    attrs = {name: fixed.get(name, drawn[name]).long() for name in ATTRIBUTES}
    u = torch.rand(n, generator=gen)
    lo = torch.tensor([r[0] for r in SIZE_RADIUS])[attrs["size"]]
    hi = torch.tensor([r[1] for r in SIZE_RADIUS])[attrs["size"]]
    radius = lo + (hi - lo) * u
    reach = (1.0 - radius - 0.04).unsqueeze(1)
    center = (torch.rand(n, 2, generator=gen) * 2 - 1) * reach
    angle = _uniform(n, -MAX_ROTATION, MAX_ROTATION, gen)
    gain = _uniform(n, 0.85, 1.10, gen)
    tint = 0.04 * torch.randn(n, 3, generator=gen)
    return Scenes(center=center, angle=angle, radius=radius, gain=gain, tint=tint, **attrs)


def _shape_mask(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of one shape in object coordinates (radius 1, y up) -> bool, same shape as u."""
    rho2 = u * u + v * v
    name = SHAPES[shape]
    if name == "circle":
        return rho2 <= 1.0
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.80
    if name == "triangle":  # pointing up, apex (0, 1), base at y = -0.6
        return (v >= -0.6) & (1.732 * u.abs() + v <= 1.0)
    if name == "star":  # five points: the radius limit is a triangle wave of the polar angle
        phi = torch.atan2(u, v)
        frac = torch.remainder(phi / (2 * math.pi / 5), 1.0)
        return rho2.sqrt() <= 0.42 + 0.58 * (2 * (frac - 0.5).abs())
    if name == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0
        x, y = 1.15 * u, 1.15 * v + 0.1
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if name == "cross":
        au, av = u.abs(), v.abs()
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if name == "diamond":  # taller than wide, so it differs from a rotated square
        return u.abs() / 0.68 + v.abs() <= 1.0
    if name == "ring":
        return (rho2 <= 1.0) & (rho2 >= 0.55**2)
    raise ValueError(f"unknown shape index {shape}")


def _texture_pattern(texture: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """1 where the secondary (darker) colour shows -> [N, S, S] float; coordinates rotate with the object."""
    a, b = px / TEXTURE_PERIOD, py / TEXTURE_PERIOD
    striped = (torch.remainder(b, 1.0) < 0.5).float()
    fa, fb = torch.remainder(a, 1.0) - 0.5, torch.remainder(b, 1.0) - 0.5
    dotted = (fa * fa + fb * fb <= 0.28**2).float()
    checkered = torch.remainder(torch.floor(a) + torch.floor(b), 2.0)
    solid = torch.zeros_like(a)
    stack = torch.stack([solid, striped, dotted, checkered], dim=1)  # [N, 4, S, S]
    return stack.gather(1, texture.view(-1, 1, 1, 1).expand(-1, 1, *a.shape[1:])).squeeze(1)


def _backgrounds(kind: torch.Tensor, grid_y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Background images [N, 3, S, S] for background indices `kind` [N]."""
    n, s = kind.shape[0], grid_y.shape[-1]
    level = torch.where(kind == 0, 0.10, 0.82) + 0.03 * torch.randn(n, generator=gen)
    flat = level.view(n, 1, 1, 1) + 0.02 * torch.randn(n, 3, 1, 1, generator=gen)
    speckle = 0.10 + 0.35 * torch.rand(n, 1, s // SUPERSAMPLE, s // SUPERSAMPLE, generator=gen)
    speckle = F.interpolate(speckle, scale_factor=SUPERSAMPLE, mode="nearest").expand(-1, 3, -1, -1)
    direction = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).view(n, 1, 1, 1)
    gradient = (0.05 + 0.25 * (1 + direction * grid_y)).expand(n, 3, s, s)
    out = flat.expand(n, 3, s, s).clone()
    out = torch.where((kind == 2).view(n, 1, 1, 1), speckle, out)
    out = torch.where((kind == 3).view(n, 1, 1, 1), gradient, out)
    return out


def _gaussian_blur(images: torch.Tensor, sigma: float = BLUR_SIGMA, size: int = 5) -> torch.Tensor:
    x = torch.arange(size, dtype=images.dtype) - (size - 1) / 2
    k1 = torch.exp(-(x**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(3, 1, size, size)
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=3)


def render(scenes: Scenes, style: str, gen: torch.Generator) -> torch.Tensor:
    """Rasterise scenes in a style -> FloatTensor[N, 3, 32, 32] in [0, 1].

    `gen` drives the style's own randomness (background speckle, pixel noise) so that the scene
    geometry can come from a different, style-independent generator.
    """
    if style not in STYLES:
        raise ValueError(f"unknown world style {style!r}; valid styles: {', '.join(STYLES)}")
    n, s = len(scenes), IMAGE_SIZE * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    gy, gx = -coords.view(s, 1).expand(s, s), coords.view(1, s).expand(s, s)  # y up
    dx = gx.unsqueeze(0) - scenes.center[:, 0].view(n, 1, 1)
    dy = gy.unsqueeze(0) - scenes.center[:, 1].view(n, 1, 1)
    cos, sin = scenes.angle.cos().view(n, 1, 1), scenes.angle.sin().view(n, 1, 1)
    px, py = cos * dx + sin * dy, -sin * dx + cos * dy  # object frame (rotated by -angle)
    r = scenes.radius.view(n, 1, 1)
    u, v = px / r, py / r

    mask = torch.zeros(n, s, s)
    for k in range(len(SHAPES)):
        idx = (scenes.shape == k).nonzero().squeeze(1)
        if idx.numel():
            mask[idx] = _shape_mask(k, u[idx], v[idx]).float()

    rgb = torch.tensor(COLOUR_RGB)[scenes.colour] * scenes.gain.unsqueeze(1) + scenes.tint  # [N, 3]
    rgb = rgb.clamp(0.0, 1.0)
    pattern = _texture_pattern(scenes.texture, px, py).unsqueeze(1)  # [N, 1, S, S]
    obj = rgb.view(n, 3, 1, 1) * (1 - 0.55 * pattern)
    m = mask.unsqueeze(1)

    if style == "sketch":  # a 1-px outline in the object's colour on paper-white, no texture or background
        cover = F.avg_pool2d(m, SUPERSAMPLE) > 0.5
        inner = -F.max_pool2d(-cover.float(), 3, stride=1, padding=1)
        edge = cover.float() - inner
        paper = 0.96 + 0.02 * torch.randn(n, 1, 1, 1, generator=gen)
        img = paper * (1 - edge) + 0.85 * rgb.view(n, 3, 1, 1) * edge
        return img.clamp(0.0, 1.0)

    bg = _backgrounds(scenes.background, gy, gen)
    img = F.avg_pool2d(bg * (1 - m) + obj * m, SUPERSAMPLE)
    if style == "noisy":
        img = img + NOISE_SIGMA * torch.randn(img.shape, generator=gen)
    elif style == "blurred":
        img = _gaussian_blur(img)
    return img.clamp(0.0, 1.0)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] floats in [0, 1] -> [N, H, W, 3] uint8 (what an image file would hold)."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_pil(image_hwc: torch.Tensor) -> Image.Image:
    return Image.fromarray(image_hwc.clone().numpy())


def seeded_generator(*parts: Any) -> torch.Generator:
    """A torch generator seeded from a stable hash of `parts` (independent of Python's hash salt)."""
    return torch.Generator().manual_seed(int(stable_hash(list(parts), length=15), 16))


# --------------------------------------------------------------------------------------------
# Captions

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


def caption(attrs: Mapping[str, int], rng: random.Random) -> str:
    """One caption for a scene's attributes, e.g. "a photo of a big red striped circle."

    Attributes are dropped at random (`KEEP_P`), words replaced by synonyms, and the wording drawn
    from `CAPTION_TEMPLATES` (the zero-shot template "a photo of a {}." is the most frequent), so
    the text tower learns each attribute word on its own, not just whole class names.
    """
    shape = SHAPES[attrs["shape"]]
    noun = rng.choice(GENERIC_NOUNS) if rng.random() < GENERIC_NOUN_P else _word(shape, rng)
    words: list[str] = []
    if rng.random() < KEEP_P["size"]:
        words.append(_word(SIZES[attrs["size"]], rng))
    if rng.random() < KEEP_P["colour"]:
        words.append(_word(COLOURS[attrs["colour"]], rng))
    texture = TEXTURES[attrs["texture"]]
    after = ""
    keep_texture = rng.random() < KEEP_P["texture"] * (0.5 if texture == "solid" else 1.0)
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


# --------------------------------------------------------------------------------------------
# Label vocabularies (downstream datasets)


@dataclass(frozen=True)
class LabelVocab:
    """A label space over attribute combinations.

    `values[attr]` are the attribute indices used; classes are the product in `phrase` order
    ("size colour shape" -> "large red circle"); `split_attrs` decides the base/new checkerboard:
    a class is base when the sum of its positions along those attributes is even.
    """

    name: str
    phrase: tuple[str, ...]
    values: Mapping[str, tuple[int, ...]]
    split_attrs: tuple[str, str]
    template: str = TEMPLATE

    def classes(self) -> list[dict[str, int]]:
        """Attribute dicts in label order: the base half (checkerboard even) first, then the new half."""
        combos: list[dict[str, int]] = [{}]
        for attr in self.phrase:
            combos = [{**c, attr: v} for c in combos for v in self.values[attr]]

        def odd(c: dict[str, int]) -> int:
            return sum(self.values[a].index(c[a]) for a in self.split_attrs) % 2

        return [c for c in combos if not odd(c)] + [c for c in combos if odd(c)]

    def classname(self, attrs: Mapping[str, int]) -> str:
        return " ".join(ATTRIBUTES[a][attrs[a]] for a in self.phrase)

    def classnames(self) -> list[str]:
        return [self.classname(c) for c in self.classes()]

    def num_base(self) -> int:
        return math.ceil(len(self.classes()) / 2)


VOCABULARIES: dict[str, LabelVocab] = {
    v.name: v
    for v in (
        LabelVocab(
            "colour_shape", ("colour", "shape"),
            {"colour": tuple(range(6)), "shape": tuple(range(6))}, ("colour", "shape"),
        ),
        LabelVocab(
            "texture_shape", ("texture", "shape"),
            {"texture": tuple(range(4)), "shape": tuple(range(8))}, ("texture", "shape"),
        ),
        LabelVocab(
            "size_colour_shape", ("size", "colour", "shape"),
            {"size": (0, 1), "colour": tuple(range(4)), "shape": tuple(range(4))}, ("colour", "shape"),
        ),
    )
}
# All 80 colour+shape pairs: only for the pretraining report (not a registered dataset).
FULL_COLOUR_SHAPE = LabelVocab(
    "colour_shape_all", ("colour", "shape"),
    {"colour": tuple(range(len(COLOURS))), "shape": tuple(range(len(SHAPES)))}, ("colour", "shape"),
)


def held_out_pairs() -> frozenset[tuple[int, int]]:
    """(colour, shape) index pairs never rendered in pretraining: the new half of `colour_shape`.

    The new half of `size_colour_shape` (same checkerboard on a sub-grid) is inside this set too.
    """
    vocab = VOCABULARIES["colour_shape"]
    return frozenset((c["colour"], c["shape"]) for c in vocab.classes()[vocab.num_base():])


def pretraining_pairs() -> torch.Tensor:
    """[P, 2] (colour, shape) pairs pretraining may render: all pairs minus `held_out_pairs()`."""
    held = held_out_pairs()
    keep = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if (c, s) not in held]
    return torch.tensor(keep, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Datasets


@dataclass
class WorldOptions:
    """`load_dataset(..., options=...)` keys for world datasets (the `root` argument is ignored)."""

    seed: int = 0
    train_per_class: int = 32
    val_per_class: int = 8
    test_per_class: int = 100
    cache_chunks: int = 16  # rendered chunks kept in memory (~0.8 MB each)

    def __post_init__(self) -> None:
        for name in ("train_per_class", "val_per_class", "test_per_class", "cache_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class WorldRenderer:
    """Renders (split, index) images of one vocabulary in one style, chunk by chunk, with an LRU cache."""

    def __init__(self, vocab: LabelVocab, style: str, seed: int, cache_chunks: int = 16) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown world style {style!r}; valid styles: {', '.join(STYLES)}")
        self.vocab, self.style, self.seed = vocab, style, seed
        self.classes = vocab.classes()
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    def spec(self, split: str) -> str:
        return f"{self.vocab.name}/{self.style}/{split}"

    def scenes(self, split: str, chunk: int) -> Scenes:
        """Scenes of indices [chunk*CHUNK, (chunk+1)*CHUNK): index j shows class j % K."""
        k = len(self.classes)
        labels = torch.arange(chunk * CHUNK, (chunk + 1) * CHUNK) % k
        fixed = {a: torch.tensor([self.classes[int(y)][a] for y in labels]) for a in self.vocab.phrase}
        gen = seeded_generator("world-scenes", STREAM_VERSION, self.vocab.name, split, self.seed, chunk)
        return sample_scenes(CHUNK, gen, fixed)

    def chunk(self, split: str, chunk: int) -> torch.Tensor:
        """uint8 [CHUNK, 32, 32, 3] images of one chunk (cached)."""
        key = (split, chunk)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        gen = seeded_generator(
            "world-style", STREAM_VERSION, self.vocab.name, split, self.seed, chunk, self.style
        )
        images = quantize(render(self.scenes(split, chunk), self.style, gen))
        self._cache[key] = images
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return images

    def image(self, split: str, index: int) -> torch.Tensor:
        """uint8 [32, 32, 3] image at `index` of `split`."""
        return self.chunk(split, index // CHUNK)[index % CHUNK]


def _parse_key(key: str) -> tuple[str, str, int, int]:
    """`world:<vocab>/<style>/<split>:<seed>:<index>` -> (spec, split, seed, index)."""
    try:
        prefix, spec, seed, index = key.split(":")
        split = spec.rsplit("/", 1)[1]
        if prefix != "world":
            raise ValueError
        return spec, split, int(seed), int(index)
    except (ValueError, IndexError):
        raise ValueError(
            f"not a world image key: {key!r} (expected world:<vocab>/<style>/<split>:<seed>:<index>)"
        ) from None


def world_items(vocab: LabelVocab, style: str, split: str, seed: int, per_class: int) -> list[Item]:
    """Items of one split in index order; index j has label j % K."""
    names = vocab.classnames()
    k = len(names)
    spec = f"{vocab.name}/{style}/{split}"
    return [
        Item(key=f"world:{spec}:{seed}:{j}", label=j % k, classname=names[j % k], domain=style)
        for j in range(per_class * k)
    ]


def load_world(vocab_name: str, style: str, root: Path | None, options: dict[str, Any]) -> DatasetSplits:
    """A world dataset: `vocab_name` labels rendered in `style`; `root` is ignored (nothing on disk)."""
    del root
    opts = from_dict(WorldOptions, options, where=f"world_{vocab_name}_{style} options")
    vocab = VOCABULARIES[vocab_name]
    renderer = WorldRenderer(vocab, style, opts.seed, opts.cache_chunks)

    def load_image(item: Item) -> Image.Image:
        spec, split, seed, index = _parse_key(item.key)
        if spec != renderer.spec(split) or seed != opts.seed:
            raise ValueError(
                f"item {item.key!r} does not belong to world dataset {renderer.spec(split)} seed {opts.seed}"
            )
        return to_pil(renderer.image(split, index))

    def image_identity(item: Item) -> str:
        spec, _, seed, index = _parse_key(item.key)
        return f"world-{RENDER_VERSION}:{spec}:{seed}:{index}"

    return DatasetSplits(
        name=f"world_{vocab_name}_{style}",
        classnames=vocab.classnames(),
        template=vocab.template,
        train=world_items(vocab, style, "train", opts.seed, opts.train_per_class),
        val=world_items(vocab, style, "val", opts.seed, opts.val_per_class),
        test=world_items(vocab, style, "test", opts.seed, opts.test_per_class),
        root=None,
        load_image=load_image,
        image_identity=image_identity,
        templates=("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a rendering of a {}."),
        domain=style,
    )


def render_split(
    vocab: LabelVocab, style: str, split: str, seed: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split at once -> (uint8 [N, 32, 32, 3], labels [N]); the same pixels as load_image."""
    renderer = WorldRenderer(vocab, style, seed, cache_chunks=1)
    n = per_class * len(renderer.classes)
    chunks = [renderer.chunk(split, c) for c in range(math.ceil(n / CHUNK))]
    images = torch.cat(chunks)[:n]
    return images, torch.arange(n) % len(renderer.classes)


def dataset_names() -> list[str]:
    return [f"world_{v}_{s}" for v in VOCABULARIES for s in STYLES]


def _register(names: Sequence[str]) -> None:
    for name in names:
        vocab_name, style = name[len("world_"):].rsplit("_", 1)
        DATASETS.register(name, partial(load_world, vocab_name, style))
    vocab_name, style = DEFAULT_DATASET[len("world_"):].rsplit("_", 1)
    DATASETS.register("world", partial(load_world, vocab_name, style))


_register(dataset_names())
