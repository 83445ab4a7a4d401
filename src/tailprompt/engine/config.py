"""The run config: one typed tree, resolved from defaults <- preset YAML <- user YAML <- `--set`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tailprompt.data.augment import Augment


@dataclass
class BackboneConfig:
    name: str = "embedded"  # open_clip architecture, "tiny-vit" or "embedded"
    weights: str | None = None  # local file or open_clip pretrained tag; None = the name's default
    quick_gelu: str = "auto"  # auto | true | false
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DataConfig:
    name: str = "world_colour_shape"
    root: str | None = None  # folder holding the dataset folders (CoOp's DATA/)
    shots: int = 16  # at most this many training images per class
    tau: float = 1.0  # imbalance ratio min/max shots
    profile: str = "exp"  # exp | step | counts
    counts_file: str | None = None  # JSON {class_name: n} for profile=counts
    fewshot_ids: str | None = None  # JSON of a previous run's ids to reuse exactly
    cache: bool = True  # train/eval from cached image features (frozen image tower only)
    cache_dir: str | None = None  # default ~/.cache/tailprompt
    n_views: int = 4  # augmented training views cached per image
    batch_size_eval: int = 256
    num_workers: int = 0  # processes decoding images (cache fill, exact mode, MaPLe); results do not change
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific reader options
    # training augmentation {crop_scale: [min, max], flip: bool}; None: the dataset's default (the CoOp
    # recipe, scale 0.08-1 + flip, for the real datasets; a gentler crop for the embedded world)
    augment: Augment | None = None


@dataclass
class ProtocolConfig:
    name: str = "base_to_new"  # base_to_new | cross_dataset | domain_generalization | all_classes
    targets: list[str] = field(default_factory=list)  # target datasets (cross_dataset, domain_generalization)
    target_options: dict[str, Any] = field(default_factory=dict)  # reader options for every target dataset


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 32
    scheduler: str = "cosine"  # cosine | constant
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    max_steps: int | None = None  # optional cap on steps per run (smoke tests)
    checkpoint_every_s: float | None = 60.0  # save a resumable checkpoint after an epoch when this many
    # seconds passed since the last save (0: every epoch, null: never); does not change results


@dataclass
class EvalConfig:
    temperature: float | None = None  # fixed post-hoc temperature (TCPT uses 1.16), None = off
    fit_temperature: bool = True  # fit T on held-out data and report ECE after scaling
    dac: bool = True  # DAC on new classes (base_to_new)
    dac_k: int = 5
    ece_bins: int = 10
    geometry: bool = True
    # head / medium / tail: "thirds" sorts the classes by shots and cuts them in 3 (the papers);
    # "thresholds" uses the long-tail benchmarks' > 100 / 20-100 / < 20 training images
    groups: Literal["thirds", "thresholds"] = "thirds"


@dataclass
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    learner: dict[str, Any] = field(default_factory=lambda: {"name": "coop"})
    objectives: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "cross_entropy"}])
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1
    output_dir: str = "runs"
    method: str = ""  # preset name (tables group rows by it)
    description: str = ""  # one line shown by `tailprompt list`
