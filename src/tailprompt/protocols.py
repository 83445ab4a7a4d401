"""The three evaluation protocols (plus the plain few-shot one) as data: what to train on, what to test.

A protocol turns the run's dataset into the training label space and a list of evaluation splits.
Prompt weights move to other label spaces by rebuilding the class-name buffers only (the reference's
transfer rule), which the engine does with `learner.set_classnames`.

Each split carries its `SplitRole` (training label space or not, part of the harmonic mean, a transfer
target, its label); the run writes the roles into result.json and the report lays out its tables from
them, so a new protocol is one builder here and touches no other file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tailprompt.data.registry import load_dataset
from tailprompt.data.sampling import select_classes
from tailprompt.data.templates import is_template
from tailprompt.data.types import DatasetSplits
from tailprompt.engine.run_config import DataConfig, ProtocolConfig
from tailprompt.registry import Registry
from tailprompt.schema import ConfigError
from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)


@dataclass(frozen=True)
class SplitRole:
    """What an evaluation split is for; written to result.json (`split_roles`) and read by the report."""

    label: str  # column label in tables ("Base", "New", "Source", a target dataset's name)
    training: bool = False  # its classes are the ones the prompts were trained on (exactly one split)
    harmonic_mean: bool = False  # one of the two splits whose harmonic mean is the protocol's headline
    target: bool = False  # a transfer target: tables average it with the other targets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalSplit:
    name: str  # key in result.json "splits"
    dataset: DatasetSplits  # label space and test items of this split
    role: SplitRole

    @property
    def is_training_space(self) -> bool:
        """True when the classes are the ones the prompts were trained on."""
        return self.role.training


@dataclass
class ProtocolPlan:
    train: DatasetSplits  # training label space (few-shot sampling happens on its train split)
    evals: list[EvalSplit]
    label: str  # the protocol in words, for table titles ("base-to-new")

    @property
    def harmonic_of(self) -> tuple[str, str] | None:
        """The two splits whose harmonic mean is the headline, in protocol order; None without one."""
        names = [s.name for s in self.evals if s.role.harmonic_mean]
        return (names[0], names[1]) if len(names) == 2 else None

    def roles(self) -> dict[str, dict[str, Any]]:
        """`{split name: role}` as plain data (result.json's `split_roles`)."""
        return {s.name: s.role.to_dict() for s in self.evals}


ProtocolBuilder = Callable[[DataConfig, ProtocolConfig], ProtocolPlan]
PROTOCOLS: Registry[ProtocolBuilder] = Registry("protocol")

# Default targets when `protocol.targets` is empty (the papers' choices).
IMAGENET_DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
XD_TARGETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
              "sun397", "dtd", "eurosat", "ucf101"]


def _source(data: DataConfig) -> DatasetSplits:
    """The run's dataset, read with `data.options` (and its `data.templates` entry)."""
    return load_dataset(data.name, data.root, with_template(data, data.name, data.options))


def _target(data: DataConfig, protocol: ProtocolConfig, name: str) -> DatasetSplits:
    """A transfer target, read with `protocol.target_options` (and its `data.templates` entry)."""
    return load_dataset(name, data.root, with_template(data, name, protocol.target_options))


def with_template(data: DataConfig, name: str, options: dict) -> dict:
    """Reader options plus the `data.templates` entry for dataset `name` (explicit options.template wins)."""
    template = data.templates.get(name)
    if template is None or "template" in options:
        return options
    if not is_template(template):
        raise ConfigError(f"data.templates.{name}: expected a template with one '{{}}' for the class name "
                          f"(and no other braces), got {template!r}")
    return {**options, "template": template}


def base_to_new(data: DataConfig, protocol: ProtocolConfig) -> ProtocolPlan:
    """Train on the (imbalanced) base half, test base and new separately; HM of the two."""
    full = _source(data)
    base, new = select_classes(full, "base"), select_classes(full, "new")
    return ProtocolPlan(
        train=base,
        evals=[EvalSplit("base", base, SplitRole("Base", training=True, harmonic_mean=True)),
               EvalSplit("new", new, SplitRole("New", harmonic_mean=True))],
        label="base-to-new",
    )


def all_classes(data: DataConfig, protocol: ProtocolConfig) -> ProtocolPlan:
    """The plain few-shot protocol: train and test on every class."""
    full = select_classes(_source(data), "all")
    return ProtocolPlan(train=full, evals=[EvalSplit("all", full, SplitRole("All", training=True))],
                        label="all classes")


def _default_targets(protocol: ProtocolConfig, source: str, dg: bool) -> list[str]:
    """`protocol.targets`, else the papers' targets for `source` (the loaded dataset's own name, so that
    aliases such as `world` resolve to the registered dataset they stand for)."""
    from tailprompt.data.registry import DATASETS

    if protocol.targets:
        return list(protocol.targets)
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


def _transfer(data: DataConfig, protocol: ProtocolConfig, dg: bool) -> ProtocolPlan:
    source = select_classes(_source(data), "all")
    evals = [EvalSplit("source", source, SplitRole("Source", training=True))]
    for name in _default_targets(protocol, source.name, dg):
        evals.append(EvalSplit(name, select_classes(_target(data, protocol, name), "all"),
                               SplitRole(name, target=True)))
    return ProtocolPlan(train=source, evals=evals,
                        label="domain generalization" if dg else "cross-dataset")


def cross_dataset(data: DataConfig, protocol: ProtocolConfig) -> ProtocolPlan:
    """Train on a source dataset (all classes), test the prompts on each target's full label set."""
    return _transfer(data, protocol, dg=False)


def domain_generalization(data: DataConfig, protocol: ProtocolConfig) -> ProtocolPlan:
    """Train on the source domain, test on shifted domains with the same (or a subset of the) classes."""
    return _transfer(data, protocol, dg=True)


PROTOCOLS.register("base_to_new", base_to_new)
PROTOCOLS.register("all_classes", all_classes)
PROTOCOLS.register("cross_dataset", cross_dataset)
PROTOCOLS.register("domain_generalization", domain_generalization)
