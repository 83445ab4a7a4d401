import json
from pathlib import Path

import pytest

from tailprompt.data import load_dataset


@pytest.fixture(scope="session")
def eurosat_descriptions(eurosat_root, tmp_path_factory) -> Path:
    """A descriptions file in CoPrompt's gpt_file format for the mini EuroSAT classes (2 sentences each)."""
    names = load_dataset("eurosat", eurosat_root).classnames
    path = tmp_path_factory.mktemp("descriptions") / "eurosat_prompt.json"
    path.write_text(json.dumps({n: [f"a satellite photo of {n}.", f"{n} seen from above."] for n in names}))
    return path


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
