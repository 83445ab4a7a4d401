"""`tailprompt features`: precompute and cache image features of a dataset for one backbone."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from tailprompt.cli import UserError
from tailprompt.commands.data import add_dataset_arguments, load_or_fail, reader_options

if TYPE_CHECKING:
    from tailprompt.data.types import DatasetSplits, Item
    from tailprompt.engine.distributed import DistContext

SPLITS = ("train", "val", "test")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="precompute cached image features (eval view + augmented views)",
        description="Encode and cache image features. Under `torchrun --nproc_per_node N -m tailprompt features "
        "...` each process encodes a share of the missing images.")
    parser.add_argument("--backbone", required=True, help="open_clip architecture, tiny-vit, embedded or embedded-vit")
    parser.add_argument("--weights", help="checkpoint file or open_clip pretrained tag")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="image tower autocast (default auto: bf16 on CUDA and bf16-capable CPUs); "
                             "train with the same backbone.precision to hit these features")
    add_dataset_arguments(parser)
    parser.add_argument("--views", type=int, default=4, help="augmented training views per image (default 4)")
    parser.add_argument("--cache-dir", help="cache folder (default $TAILPROMPT_CACHE or ~/.cache/tailprompt)")
    parser.add_argument("--splits", default="train,val,test", help="comma-separated splits (default all three)")
    parser.add_argument("--shots", type=int, help="only the few-shot subsets (tau = 1, a superset of any tau)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of --shots (default 1 2 3)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0,
                        help="processes decoding images (default 0: in this process); features do not change")
    parser.set_defaults(func=run)


def _load_backbone(args: argparse.Namespace):
    from tailprompt.backbone import load_backbone
    from tailprompt.utils import resolve_device

    device = str(resolve_device(args.device, "--device"))  # its own message, not the backbone's
    try:
        return load_backbone(args.backbone, weights=args.weights, device=device, precision=args.precision)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise UserError(f"backbone {args.backbone!r}: {e.args[0] if e.args else e}") from None


def selected_items(ds: DatasetSplits, split: str, shots: int | None, seeds: list[int]) -> list[Item]:
    """All items of `split`, or with `shots` the union over `seeds` of the balanced few-shot subsets."""
    from tailprompt.data.sampling import sample_training_set

    if shots is None or split == "test":
        return list(getattr(ds, split))
    chosen: dict[str, Item] = {}
    for seed in seeds:
        ts = sample_training_set(ds, shots, 1.0, seed)
        chosen.update((it.key, it) for it in (ts.items if split == "train" else ts.val_items))
    return list(chosen.values())


def _silent(*args: object) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UserError(f"--splits: expected a comma-separated subset of train,val,test, got {args.splits!r}")
    for option, value, least in (("--views", args.views, 0), ("--shots", args.shots, 1),
                                 ("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                                 *(("--seeds", seed, 0) for seed in args.seeds)):
        if value is not None and value < least:
            raise UserError(f"{option}: expected an integer >= {least}, got {value}")
    ds = load_or_fail(args.dataset, args.root, reader_options(args.option))
    if args.shots is not None and not ds.train:
        raise UserError(f"dataset {ds.name!r} has no training split; drop --shots")
    from tailprompt.engine.distributed import finish, init_from_env

    group = init_from_env()  # torchrun: the ranks share the cache misses
    try:
        return fill(args, ds, splits, group)
    finally:
        finish(group)


def fill(args: argparse.Namespace, ds: DatasetSplits, splits: list[str], group: DistContext | None) -> int:
    """Fill the cache for `splits`; under torchrun every rank encodes a share and rank 0 reports."""
    from tailprompt.data.augment import resolve_augment
    from tailprompt.data.features import FeatureCache
    from tailprompt.data.files import DatasetError
    from tailprompt.files import check_writable

    cache = FeatureCache(args.cache_dir, num_workers=args.workers)
    check_writable(cache.root, "cache folder", "--cache-dir (or $TAILPROMPT_CACHE)")
    backbone = _load_backbone(args)
    augment = resolve_augment(None, ds.augment)  # the views a run with the dataset's default would read
    say = print if group is None or group.is_main else _silent
    say(
        f"features: backbone {args.backbone} ({backbone.identity}, {backbone.precision}), dataset {ds.name}, "
        f"cache {cache.root}"
    )
    for split in splits:
        items = selected_items(ds, split, args.shots, args.seeds)
        if not items:
            continue
        views = range(args.views + 1) if split == "train" else range(1)
        for view in views:
            hits, misses, start = cache.hits, cache.misses, time.perf_counter()
            try:
                cache.get(backbone, ds, items, view, batch_size=args.batch_size, progress=True, shard=group,
                          augment=augment)
            except DatasetError as e:  # an image vanished or is unreadable: name it, no traceback
                raise UserError(f"{e} (run `tailprompt data check` for a full report)") from None
            say(
                f"  {split:5} view {view}: {len(items)} images, {cache.hits - hits} hits, "
                f"{cache.misses - misses} misses ({time.perf_counter() - start:.1f} s)"
            )
    say(f"total: {cache.hits} hits, {cache.misses} misses" + (f" (rank 0 of {group.world_size})" if group else ""))
    return 0
