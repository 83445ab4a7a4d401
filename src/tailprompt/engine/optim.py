"""Optimiser and learning-rate schedule (Dassl's, which every reference trainer uses)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from tailprompt.engine.run_config import OptimConfig
from tailprompt.schema import ConfigError


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum, no dampening, no Nesterov (Dassl `build_optimizer`)."""
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.name: expected 'sgd' or 'adamw', got {cfg.name!r}")


def lr_at_epoch(epoch: int, cfg: OptimConfig) -> float:
    """Learning rate used during `epoch` (0-based).

    Dassl wraps `CosineAnnealingLR(T_max=epochs)` in a constant warm-up that is stepped once per epoch
    and restarts the cosine from its step 0 after warm-up: epochs `< warmup_epochs` run at `warmup_lr`,
    epoch `e >= warmup_epochs` runs at `lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2`.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.scheduler == "constant":
        return cfg.lr
    if cfg.scheduler != "cosine":
        raise ConfigError(f"optim.scheduler: expected 'cosine' or 'constant', got {cfg.scheduler!r}")
    step = epoch - cfg.warmup_epochs
    return cfg.lr * (1 + math.cos(math.pi * step / max(1, cfg.epochs))) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
