import math

import pytest

from tailprompt.engine.optim import lr_at_epoch
from tailprompt.engine.run_config import OptimConfig
from tailprompt.engine.train import batches_per_epoch
from tailprompt.schema import ConfigError


def test_dassl_constant_warmup_then_cosine_restarted_at_step_zero():
    cfg = OptimConfig(lr=0.002, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    lrs = [lr_at_epoch(e, cfg) for e in range(10)]
    assert lrs[0] == 1e-5
    assert lrs[1] == pytest.approx(0.002)  # cosine step 0 right after warm-up
    assert lrs[2] == pytest.approx(0.002 * (1 + math.cos(math.pi / 10)) / 2)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # strictly decreasing afterwards
    assert lrs[-1] > 0


def test_no_warmup_and_constant():
    assert lr_at_epoch(0, OptimConfig(lr=0.1, warmup_epochs=0)) == pytest.approx(0.1)
    assert lr_at_epoch(5, OptimConfig(lr=0.1, warmup_epochs=0, scheduler="constant")) == 0.1
    with pytest.raises(ConfigError, match="optim.scheduler"):
        lr_at_epoch(3, OptimConfig(scheduler="step"))


def test_drop_last_only_with_a_full_batch():
    assert batches_per_epoch(100, 32) == 3
    assert batches_per_epoch(20, 32) == 1  # fewer items than a batch: one partial batch
