"""World scenes and their pixels: attributes, nuisance jitter, rendering styles.

Images are 32x32 RGB scenes of one object described by attributes (shape, colour, size, texture,
background) plus nuisance jitter (position, rotation, scale, colour gain/tint). A rendering *style*
(clean, noisy, blurred, sketch) plays the role of a domain. The sketch style draws an outline only, so a
sketched texture label carries no texture information.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from tailprompt.utils import stable_hash

RENDER_VERSION = "v3"  # bump when pixels change: it is part of every image identity (feature-cache key)
# Seeds every random stream (scenes, style noise, pretraining batches). Kept apart from RENDER_VERSION so a
# pixel change in one style leaves scenes, other styles and the pretraining data of the shipped weights as
# they were. v2 changed only the noisy style (sigma 0.18 -> 0.08), v3 only the noisy style again (-> 0.04).
STREAM_VERSION = "v1"
IMAGE_SIZE = 32
SUPERSAMPLE = 2  # shapes are rasterised at 64 px and box-filtered to 32 px (anti-aliasing)

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
# At 0.18 the embedded model was at chance (10.7% on colour_shape), at 0.08 zero-shot fell to 30-40%; 0.04 puts it
# near real CLIP's 65-75% on the benchmark (benchmarks/world_regime.py).
NOISE_SIGMA = 0.04
BLUR_SIGMA = 1.0  # 5x5 Gaussian
MAX_ROTATION = math.radians(15.0)  # small, so a square never turns into a diamond


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

