"""How far do an embedded backbone's image features move under the world's training augmentation?

For `--images` test images of a world dataset: the mean cosine between each image's feature (eval
preprocessing) and the features of its training views (the dataset's `data.augment` default: a 60-100% crop
+ flip), averaged over `--views` draws. A tower whose features move under the crop makes prompt learners
that train through it (MaPLe) fit the crop rather than the classes (README, embedded-vit).

    python benchmarks/view_stability.py                                   # embedded and embedded-vit
    python benchmarks/view_stability.py --vit-weights OTHER.safetensors    # plus another embedded-vit file

Prints one JSON object: {backbone label: mean cosine}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import tailprompt.world  # noqa: F401  (registers the world datasets)
from tailprompt.backbone import load_backbone
from tailprompt.data.registry import load_dataset
from tailprompt.world.datasets import AUGMENT


def mean_view_cosine(name: str, weights: Path | None, dataset: str, images: int, views: int) -> float:
    """Mean cosine between eval and training-view features of `images` evenly spaced test images."""
    vlm = load_backbone(name, weights=weights, precision="fp32")
    ds = load_dataset(dataset)
    pictures = [ds.load_image(i) for i in ds.test[:: max(1, len(ds.test) // images)][:images]]
    train = vlm.train_preprocess(AUGMENT.crop_scale, AUGMENT.flip)
    torch.manual_seed(0)
    with torch.no_grad():
        whole = F.normalize(vlm.encode_image(torch.stack([vlm.preprocess_eval(p) for p in pictures])), dim=-1)
        cosines = []
        for _ in range(views):
            view = vlm.encode_image(torch.stack([train(p) for p in pictures]))
            cosines.append(float((whole * F.normalize(view, dim=-1)).sum(-1).mean()))
    return sum(cosines) / len(cosines)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="world")
    p.add_argument("--images", type=positive_int, default=256)
    p.add_argument("--views", type=positive_int, default=2)
    p.add_argument("--vit-weights", type=Path, action="append", default=[],
                   help="another embedded-vit weights file to compare (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    missing = [str(w) for w in args.vit_weights if not w.is_file()]
    if missing:
        p.error(f"--vit-weights {missing[0]}: no such weights file")
    torch.set_num_threads(args.threads)
    backbones = [("embedded", "embedded", None), ("embedded-vit", "embedded-vit", None)]
    backbones += [(f"embedded-vit:{w}", "embedded-vit", w) for w in args.vit_weights]
    print(json.dumps({label: round(mean_view_cosine(name, w, args.dataset, args.images, args.views), 4)
                      for label, name, w in backbones}, indent=2))


if __name__ == "__main__":
    main()
