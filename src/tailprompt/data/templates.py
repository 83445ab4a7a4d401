"""Zero-shot prompt templates: one per dataset (CoOp's CUSTOM_TEMPLATES) and the ensemble list."""

from __future__ import annotations

# `CoOp:trainers/zsclip.py` CUSTOM_TEMPLATES, keyed by our dataset names.
TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "imagefolder": "a photo of a {}.",
    # LIFT's default single template (`LIFT:utils/templates.py`) for the long-tailed benchmarks
    "imagenet_lt": "a photo of a {}.",
    "places_lt": "a photo of a {}.",
    "inat2018": "a photo of a {}.",
}

# `CoOp:trainers/imagenet_templates.py` IMAGENET_TEMPLATES_SELECT: ZeroshotCLIP2's ensemble, to which the
# dataset's own template is added for every dataset except ImageNet.
ENSEMBLE_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
