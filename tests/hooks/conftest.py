from pathlib import Path

import pytest

from tailprompt.data.fixtures import make_eurosat_tree


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory) -> Path:
    """A mini EuroSAT tree in the CoOp layout (10 classes); the folder holding `eurosat/`."""
    root = tmp_path_factory.mktemp("data")
    make_eurosat_tree(root, images_per_class=20)
    return root
