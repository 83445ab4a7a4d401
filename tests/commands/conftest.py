"""A finished CoOp run on tiny-vit (weights saved to a file, as a user's checkpoint) for the command tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.testing.trees import make_eurosat_tree


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny-vit checkpoint in open_clip's layout (what a user passes as backbone.weights)."""
    from tailprompt.backbone import load_backbone

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    model = load_backbone("tiny-vit", None, device="cpu").model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmd_data")
    make_eurosat_tree(root, images_per_class=12)
    return root


def train(preset: str, data_root: Path, weights: Path, out: Path, extra: list[str] = ()) -> Path:
    cfg = resolve_config(preset, [
        "backbone.name=tiny-vit", f"backbone.weights={weights}", "data.name=eurosat", f"data.root={data_root}",
        "protocol.name=base_to_new", "optim.epochs=1", "optim.max_steps=3", "optim.batch_size=4",
        "eval.fit_temperature=false", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'runs'}", *extra,
    ])
    return execute_run(cfg, BackboneCache()).run_dir


@pytest.fixture(scope="session")
def coop_run(tmp_path_factory, data_root, tiny_weights) -> Path:
    return train("coop", data_root, tiny_weights, tmp_path_factory.mktemp("coop_run"))
