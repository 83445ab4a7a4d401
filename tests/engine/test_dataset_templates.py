"""`data.templates`: a preset's per-dataset hand templates reach the source and the transfer targets."""

from __future__ import annotations

import pytest

from tailprompt.engine.resolve import resolve_config
from tailprompt.protocols import PROTOCOLS, with_template
from tailprompt.schema import ConfigError
from tailprompt.testing.trees import make_dataset_tree


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates_data")
    for name in ("dtd", "oxford_pets", "eurosat"):
        make_dataset_tree(name, root, images_per_class=5, num_classes=4)
    return root


def test_preset_templates_replace_the_readers_for_their_datasets_only(data_root):
    cfg = resolve_config("prograd", ["data.name=oxford_pets", f"data.root={data_root}", "protocol.name=cross_dataset",
                                     "protocol.targets=[dtd, eurosat]"])
    plan = PROTOCOLS.get("cross_dataset")(cfg.data, cfg.protocol)
    assert plan.train.template == "a type of pet, a photo of a {}."  # ProGrad's table, not CoOp's
    templates = {split.name: split.dataset.template for split in plan.evals}
    assert templates["dtd"] == "a texture of {}."
    assert templates["eurosat"] == "a centered satellite photo of {}."  # same in both tables: the reader's


def test_dekg_differs_from_coop_on_dtd_and_explicit_options_win(data_root):
    dekg = resolve_config("dekg", ["data.name=dtd", f"data.root={data_root}"])
    dtd_template = PROTOCOLS.get("base_to_new")(dekg.data, dekg.protocol).train.template
    assert dtd_template == "a photo of a {}, a type of texture."
    coop = resolve_config("coop", ["data.name=dtd", f"data.root={data_root}"])
    assert PROTOCOLS.get("base_to_new")(coop.data, coop.protocol).train.template == "{} texture."
    assert with_template(dekg.data, "dtd", {"template": "{}."}) == {"template": "{}."}
    assert with_template(dekg.data, "eurosat", {"split_seed": 1}) == {"split_seed": 1}


@pytest.mark.parametrize("template", ["satellite photo", "'a {} of {kind}'"])
def test_a_template_without_one_placeholder_names_the_field(template):
    cfg = resolve_config("dekg", [f"data.templates.eurosat={template}"])
    with pytest.raises(ConfigError, match=r"data.templates.eurosat: expected a template with one '\{\}'"):
        with_template(cfg.data, "eurosat", {})
