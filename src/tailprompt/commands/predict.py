"""`tailprompt predict`: labels and probabilities per image with a finished run's prompts."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.cli import user_errors
from tailprompt.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

# tailprompt.data.files.IMAGE_SUFFIXES, spelled out so that building the parser imports nothing heavy
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label images with a run's prompts (top-k classes and probabilities per image)",
        description="Classify IMAGE_OR_FOLDER (one image, or every image under a folder, recursively) with the "
        "run's backbone, prompts and preprocessing. Prints one line per image; --out writes every top-k row "
        "as CSV or JSON (by suffix). Unreadable images are reported by name, skipped and listed at the end.",
    )
    p.add_argument("--run", required=True, help="a finished run folder (OUTPUT_DIR/<run_id>/)")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", help="an image file or a folder of images")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="text file, one class name per line, # lines skipped (default: the classes the run trained "
                        "on)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument("--out", default=None, metavar="FILE", help="write predictions to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default=None, help="override the run's backbone.device (cpu, cuda, cuda:N)")
    p.set_defaults(func=run)


@dataclass
class Prediction:
    path: str
    labels: list[str]  # top-k, most probable first
    probs: list[float]


def run(args: argparse.Namespace) -> int:
    with user_errors():
        if args.top_k < 1:
            raise UserError(f"--top-k: expected an integer >= 1, got {args.top_k}")
        if args.batch_size < 1:
            raise UserError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
        if args.out:
            from tailprompt.files import check_output_file

            check_output_file(args.out, "--out", (".csv", ".json"))  # before the images are classified, not after
        paths = image_paths(Path(args.images))
        predictions, unreadable = predict(Path(args.run), paths, args.classes, args.top_k, args.batch_size,
                                          args.device)
        for pred in predictions:
            best = ", ".join(f"{label} {p:.3f}" for label, p in zip(pred.labels, pred.probs))
            print(f"{pred.path}\t{best}")
        if args.out:
            write_predictions(Path(args.out), predictions)
            log.info("wrote %d predictions to %s", len(predictions), args.out)
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable image(s):", file=sys.stderr)
        for path, why in unreadable:
            print(f"  {path}: {why}", file=sys.stderr)
    return 0


def image_paths(target: Path) -> list[Path]:
    """`target` itself, or the image files under the folder `target` (recursively, sorted)."""
    from tailprompt.data.files import image_files_below

    if target.is_file():
        return [target]
    if not target.is_dir():
        odd = target.exists()  # a pipe, socket or device
        raise UserError(f"{target}: " + ("not an image file or a folder" if odd else "no such image or folder"))
    found = [target / rel for rel in image_files_below(target)]  # regular files: a FIFO blocks
    if not found:
        raise UserError(f"{target}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def read_classes(path: str) -> list[str]:
    from tailprompt.data.files import Duplicates
    from tailprompt.files import read_text

    names, seen = [], Duplicates("class name")  # two lines of one name would split its probability between them
    for number, line in enumerate(read_text(path, "class list").splitlines(), start=1):
        name = line.strip()
        if name and not name.startswith("#"):  # comment lines, as in the dataset readers' list files
            seen.add(name, f"{path}:{number}", f"line {number}")  # a DatasetError, a UserError
            names.append(name)
    if not names:
        raise UserError(f"{path}: class list is empty (expected one class name per line)")
    return names


def predict(run_dir: Path, paths: list[Path], classes_file: str | None, top_k: int, batch_size: int,
            device: str | None = None) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k predictions of every readable image, and (path, reason) of the unreadable ones."""
    import torch
    from tqdm.auto import tqdm

    from tailprompt.engine.saved import open_run, run_backbone, run_learner
    from tailprompt.utils import configure_threads

    saved = open_run(run_dir)
    configure_threads()
    backbone = run_backbone(saved, device)
    classnames = read_classes(classes_file) if classes_file else saved.classnames
    learner = run_learner(saved, backbone)
    if classes_file:  # a label space the prompts were not trained on
        learner.set_classnames(classnames, saved.template, seen=False)
    k = min(top_k, len(classnames))
    text = None if learner.instance_conditioned else _text(learner)
    predictions: list[Prediction] = []
    unreadable: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=len(paths) < 2)
    for start in range(0, len(paths), batch_size):
        batch, kept = [], []
        for path in paths[start : start + batch_size]:
            image = _decode(path, unreadable)
            if image is not None:
                batch.append(backbone.preprocess_eval(image))
                kept.append(path)
        bar.update(len(paths[start : start + batch_size]))
        if not batch:
            continue
        images = torch.stack(batch).to(backbone.device)
        with torch.no_grad(), backbone.autocast():
            feats = learner.image_features(images).float()
            txt = text if text is not None else learner.text_features(feats).float()
        probs = logits_of(feats, txt, backbone.logit_scale).softmax(-1)
        top = probs.topk(k, dim=-1)
        for path, p, idx in zip(kept, top.values.tolist(), top.indices.tolist()):
            predictions.append(Prediction(str(path), [classnames[i] for i in idx], p))
    bar.close()
    if not predictions:
        raise UserError(f"no readable image among {len(paths)}: " + "; ".join(f"{p}: {w}" for p, w in unreadable[:3]))
    return predictions, unreadable


def _text(learner: Any) -> Tensor:
    import torch


    with torch.no_grad(), learner.backbone.autocast():
        return learner.text_features(None).float()


def logits_of(image_feats: Tensor, text_feats: Tensor, scale: float) -> Tensor:
    """`scale * cos`: `[B, D] x [K, D] -> [B, K]`, or per image `[B, K, D]` (instance-conditioned)."""
    if text_feats.dim() == 3:
        return scale * (text_feats @ image_feats.unsqueeze(-1)).squeeze(-1)
    return scale * image_feats @ text_feats.T


def _decode(path: Path, unreadable: list[tuple[str, str]]) -> Any:
    from tailprompt.data.files import UNREADABLE_IMAGE, open_image

    try:
        with open_image(path) as img:
            return img.convert("RGB")
    except UNREADABLE_IMAGE as e:
        # Listed once at the end (or in the error when no image is readable), not also as it happens.
        unreadable.append((str(path), " ".join(str(e).split())[:120] or type(e).__name__))
        return None


def write_predictions(path: Path, predictions: list[Prediction]) -> None:
    """CSV (one row per image and rank: path, rank, label, prob) or JSON (a list of objects)."""
    import csv
    import io

    from tailprompt.utils import write_json_atomic, write_text_atomic

    if path.suffix.lower() == ".json":
        write_json_atomic(path, [{"path": p.path, "labels": p.labels, "probs": p.probs} for p in predictions])
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "rank", "label", "prob"])
    for p in predictions:
        for rank, (label, prob) in enumerate(zip(p.labels, p.probs), start=1):
            writer.writerow([p.path, rank, label, f"{prob:.6f}"])
    write_text_atomic(path, buf.getvalue())
