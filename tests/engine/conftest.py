from pathlib import Path

import pytest

from tailprompt.data.fixtures import make_eurosat_tree


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory) -> Path:
    """A mini EuroSAT tree in the CoOp layout (10 classes); the folder holding `eurosat/`."""
    root = tmp_path_factory.mktemp("data")
    make_eurosat_tree(root, images_per_class=20)
    return root


@pytest.fixture
def base_overrides(eurosat_root, tmp_path) -> list[str]:
    return [
        "backbone.name=tiny-vit",
        "data.name=eurosat",
        f"data.root={eurosat_root}",
        "protocol.name=base_to_new",
        "data.tau=0.06",
        "seed=1",
        "optim.epochs=2",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'runs'}",
    ]
