"""The three evaluation protocols (plus the plain few-shot one) as data: what to train on, what to test.

A protocol turns the run's dataset into the training label space and a list of evaluation splits.
Prompt weights move to other label spaces by rebuilding the class-name buffers only (the reference's
transfer rule), which the engine does with `learner.set_classnames`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tailprompt.config import ConfigError
from tailprompt.data.registry import load_dataset
from tailprompt.data.sampling import select_classes
from tailprompt.data.types import DatasetSplits
from tailprompt.engine.config import RunConfig
from tailprompt.registry import Registry
from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)


@dataclass
class EvalSplit:
    name: str  # key in result.json "splits"
    dataset: DatasetSplits  # label space and test items of this split
    is_training_space: bool  # True when the classes are the ones the prompts were trained on


@dataclass
class ProtocolPlan:
    train: DatasetSplits  # training label space (few-shot sampling happens on its train split)
    evals: list[EvalSplit]
    harmonic_of: tuple[str, str] | None = None  # ("base", "new") for base-to-new


ProtocolBuilder = Callable[[RunConfig], ProtocolPlan]
PROTOCOLS: Registry[ProtocolBuilder] = Registry("protocol")

# Default targets when `protocol.targets` is empty (the papers' choices).
IMAGENET_DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
XD_TARGETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
              "sun397", "dtd", "eurosat", "ucf101"]


def _load(cfg: RunConfig, name: str | None = None) -> DatasetSplits:
    """The source dataset (`name` None, with `data.options`) or a target (with `protocol.target_options`)."""
    if name is None:
        return load_dataset(cfg.data.name, cfg.data.root, cfg.data.options)
    return load_dataset(name, cfg.data.root, cfg.protocol.target_options)


def base_to_new(cfg: RunConfig) -> ProtocolPlan:
    """Train on the (imbalanced) base half, test base and new separately; HM of the two."""
    full = _load(cfg)
    base, new = select_classes(full, "base"), select_classes(full, "new")
    return ProtocolPlan(
        train=base,
        evals=[EvalSplit("base", base, True), EvalSplit("new", new, False)],
        harmonic_of=("base", "new"),
    )


def all_classes(cfg: RunConfig) -> ProtocolPlan:
    """The plain few-shot protocol: train and test on every class."""
    full = select_classes(_load(cfg), "all")
    return ProtocolPlan(train=full, evals=[EvalSplit("all", full, True)])


def _default_targets(cfg: RunConfig, source: str, dg: bool) -> list[str]:
    """`protocol.targets`, else the papers' targets for `source` (the loaded dataset's own name, so that
    aliases such as `world` resolve to the registered dataset they stand for)."""
    from tailprompt.data.registry import DATASETS

    if cfg.protocol.targets:
        return list(cfg.protocol.targets)
    if source.startswith("world_"):
        # Same vocabulary in other rendering styles (DG) or other vocabularies (cross-dataset).
        worlds = [n for n in DATASETS.names("world_*") if n != source]
        if dg:
            vocab = source.rsplit("_", 1)[0]
            return [n for n in worlds if n.rsplit("_", 1)[0] == vocab]
        domain = source.rsplit("_", 1)[-1]
        return [n for n in worlds if n.endswith("_" + domain)]
    if source == "imagenet":
        return IMAGENET_DG_TARGETS if dg else XD_TARGETS
    raise ConfigError(f"protocol.targets: no default targets for source {source!r}; list them explicitly")


def _transfer(cfg: RunConfig, dg: bool) -> ProtocolPlan:
    source = select_classes(_load(cfg), "all")
    evals = [EvalSplit("source", source, True)]
    for name in _default_targets(cfg, source.name, dg):
        evals.append(EvalSplit(name, select_classes(_load(cfg, name), "all"), False))
    return ProtocolPlan(train=source, evals=evals)


def cross_dataset(cfg: RunConfig) -> ProtocolPlan:
    """Train on a source dataset (all classes), test the prompts on each target's full label set."""
    return _transfer(cfg, dg=False)


def domain_generalization(cfg: RunConfig) -> ProtocolPlan:
    """Train on the source domain, test on shifted domains with the same (or a subset of the) classes."""
    return _transfer(cfg, dg=True)


PROTOCOLS.register("base_to_new", base_to_new)
PROTOCOLS.register("all_classes", all_classes)
PROTOCOLS.register("cross_dataset", cross_dataset)
PROTOCOLS.register("domain_generalization", domain_generalization)
