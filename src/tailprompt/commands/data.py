"""`tailprompt data check|sample|descriptions`: validate a dataset folder; print a seeded long-tailed few-shot
sample; write a dataset's own per-class descriptions (the embedded world's) as a CoPrompt `gpt_file` JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.cli import UserError
from tailprompt.schema import ConfigError, parse_override

if TYPE_CHECKING:
    from tailprompt.data.types import DatasetSplits

# tailprompt.data.sampling.PROFILES, spelled out so that building the parser imports no torch (a test keeps
# them equal)
PROFILES = ("exp", "step", "counts")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dataset`, `--root`, `--option` (shared with `tailprompt features`)."""
    parser.add_argument("--dataset", required=True, help="reader name, e.g. eurosat, imagenet, imagefolder")
    parser.add_argument("--root", help="folder holding the dataset folders (CoOp's DATA/)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="reader option, e.g. generate_split=true, split_file=my.json, template='a photo of a {}.'",
    )  # fmt: skip


def reader_options(pairs: list[str]) -> dict[str, Any]:
    """`["k=v", ...]` -> `{k: parsed v}`; a malformed pair is a `UserError`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        try:
            path, value = parse_override(pair)
        except ConfigError as e:
            raise UserError(str(e)) from None
        out[".".join(path)] = value
    return out


def load_or_fail(name: str, root: str | None, options: dict[str, Any]) -> DatasetSplits:
    """`load_dataset` with every user mistake turned into a one-line `UserError`."""
    from tailprompt.data.files import DatasetError
    from tailprompt.data.registry import load_dataset
    from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)

    try:
        return load_dataset(name, root, options)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    except (DatasetError, ConfigError) as e:
        raise UserError(str(e)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="check dataset folders, sample few-shot training sets")
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    check = actions.add_parser(
        "check", help="validate a dataset folder and print classes and images per split"
    )
    add_dataset_arguments(check)
    check.add_argument("--deep", action="store_true", help="fully decode every image (slow)")
    check.set_defaults(func=run_check)

    sample = actions.add_parser("sample", help="print the seeded long-tailed few-shot training set")
    add_dataset_arguments(sample)
    sample.add_argument("--shots", type=int, default=16, help="max training images per class (default 16)")
    sample.add_argument("--tau", type=float, default=1.0, help="imbalance ratio min/max shots (default 1)")
    sample.add_argument("--seed", type=int, default=1)
    sample.add_argument(
        "--classes", choices=["base", "new", "all"], default="all", help="label set (default all)"
    )
    sample.add_argument("--profile", choices=PROFILES, default="exp", help="long-tail profile (default exp)")
    sample.add_argument("--counts", metavar="FILE", help="JSON {class name: n} for --profile counts")
    sample.add_argument("--fewshot-ids", metavar="FILE", help="reuse the ids of an earlier --json record")
    sample.add_argument("--json", action="store_true", help="print {dataset, seed, counts, ids} as JSON")
    sample.set_defaults(func=run_sample)

    describe = actions.add_parser(
        "descriptions",
        help="write the dataset's per-class description sentences as JSON {class: [sentence, ...]}",
        description="Write the per-class descriptions a dataset provides itself (the embedded world's, built from "
        "each class's attributes) in CoPrompt's gpt_file format, for `data.descriptions`. Datasets without "
        "their own descriptions (the real ones) need a file from elsewhere (e.g. CoPrompt's LLM files).",
    )
    add_dataset_arguments(describe)
    describe.add_argument("--out", type=Path, required=True, help="JSON file to write")
    describe.set_defaults(func=run_descriptions)


def run_check(args: argparse.Namespace) -> int:
    from tailprompt.data.check import check_dataset
    from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)

    try:
        report = check_dataset(
            args.dataset, args.root, reader_options(args.option), deep=args.deep, progress=True
        )
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    print(report.format())
    return 0 if report.ok else 1


def run_sample(args: argparse.Namespace) -> int:
    from tailprompt.data.sampling import sample_training_set, sampling_record, select_classes

    ds = select_classes(load_or_fail(args.dataset, args.root, reader_options(args.option)), args.classes)
    try:
        ts = sample_training_set(
            ds,
            args.shots,
            args.tau,
            args.seed,
            profile=args.profile,
            counts=args.counts,
            fewshot_ids=args.fewshot_ids,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    record = sampling_record(ds, args.seed, ts)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{ds.name}: {args.classes} classes, shots {args.shots}, tau {args.tau}, "
        f"profile {args.profile}, seed {args.seed}"
    )
    print(f"{'label':>5}  {'n':>4}  class")
    for k, (name, n) in enumerate(record["counts"].items()):
        print(f"{k:>5}  {n:>4}  {name}")
    print(
        f"{len(ts.items)} training images, {len(ts.val_items)} validation images (--json lists the image ids)"
    )
    return 0


def run_descriptions(args: argparse.Namespace) -> int:
    from tailprompt.utils import write_json_atomic

    ds = load_or_fail(args.dataset, args.root, reader_options(args.option))
    if ds.descriptions is None:
        raise UserError(
            f"dataset {ds.name!r} has no descriptions of its own (only the embedded world's datasets write "
            f"them); give runs a JSON file {{class name: [sentence, ...]}} as data.descriptions"
        )
    from tailprompt.files import check_output_file

    check_output_file(args.out, "--out", (".json",))  # a folder, or a folder that cannot be written, named first
    write_json_atomic(args.out, {name: ds.descriptions[name] for name in ds.classnames}, "descriptions file")
    n = sum(len(v) for v in ds.descriptions.values())
    print(f"{ds.name}: {n} descriptions of {ds.num_classes} classes -> {args.out}")
    return 0
