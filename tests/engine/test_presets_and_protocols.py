"""Every method preset trains end to end; the transfer protocols evaluate on their targets."""

import pytest

from tailprompt.data.registry import load_dataset
from tailprompt.engine.resolve import list_presets, resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.objectives import OBJECTIVES
from tailprompt.testing.trees import make_dataset_tree

SHORT = ["optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false"]


@pytest.fixture(scope="module")
def backbones():
    return BackboneCache()


def reads_descriptions(preset: str) -> bool:
    return any("description_text_feats" in OBJECTIVES.get(o.name).reads for o in resolve_config(preset).objectives)


@pytest.mark.parametrize("preset", list_presets())
def test_each_preset_trains_end_to_end_on_the_tiny_backbone(preset, base_overrides, backbones, eurosat_descriptions):
    overrides = base_overrides + SHORT
    if preset in ("coop_fewshot", "maple_xd"):
        overrides = overrides + ["protocol.name=base_to_new"]
    if reads_descriptions(preset):
        overrides = overrides + [f"data.descriptions={eurosat_descriptions}"]
    r = execute_run(resolve_config(preset, overrides), backbones).result
    assert r["method"] == preset
    curve = r["loss_curve"]
    if preset == "zeroshot":
        assert curve["total"] == []  # nothing to train
    else:
        assert len(curve["total"]) == 1 and curve["total"][0] == curve["total"][0]
        names = {o.name for o in resolve_config(preset).objectives}
        assert {k.split("/")[0] for k in curve if k != "total"} == names  # every objective logged its terms
    assert 0 <= r["splits"]["new"]["accuracy"] <= 100
    roles = r["split_roles"]
    assert [n for n, role in roles.items() if role["harmonic_mean"]] == ["base", "new"]
    assert [n for n, role in roles.items() if role["training"]] == ["base"]


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_data")
    for name in ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        make_dataset_tree(name, root, images_per_class=5)
    return root


def test_domain_generalization_defaults_to_the_imagenet_variants(imagenet_root, tmp_path, backbones):
    cfg = resolve_config("coop", [
        "backbone.name=tiny-vit", "data.name=imagenet", f"data.root={imagenet_root}", "data.shots=2",
        "protocol.name=domain_generalization", f"output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}",
    ] + SHORT)
    r = execute_run(cfg, backbones).result
    assert set(r["splits"]) == {"source", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    assert r["hm"] is None
    # ImageNet-A/-R use a 200-wnid subset: the prompts are rebuilt on that (smaller or equal) class list.
    assert len(r["splits"]["imagenet_a"]["classnames"]) <= len(r["splits"]["source"]["classnames"])


def test_cross_dataset_on_explicit_targets(base_overrides, eurosat_root, tmp_path, backbones):
    make_dataset_tree("dtd", eurosat_root, images_per_class=5, num_classes=6)
    cfg = resolve_config("cpt_coop", base_overrides + SHORT + ["protocol.name=cross_dataset", "protocol.targets=[dtd]"])
    r = execute_run(cfg, backbones).result
    assert set(r["splits"]) == {"source", "dtd"}
    assert len(r["splits"]["source"]["classnames"]) == 10 and len(r["splits"]["dtd"]["classnames"]) == 6
    assert r["splits"]["dtd"]["ece_dac"] is not None  # DAC applies to classes the prompts were not trained on
    # the protocol's roles travel with the result: the report reads them instead of the protocol's name
    assert r["protocol_label"] == "cross-dataset"
    assert r["split_roles"] == {
        "source": {"label": "Source", "training": True, "harmonic_mean": False, "target": False},
        "dtd": {"label": "dtd", "training": False, "harmonic_mean": False, "target": True},
    }


@pytest.mark.parametrize("protocol, expected", [
    ("domain_generalization", {f"world_size_colour_shape_by_shape_{s}" for s in ("clean", "blurred", "sketch")}),
    ("cross_dataset", {f"world_{v}_noisy" for v in ("colour_shape", "texture_shape", "size_colour_shape")}),
])
def test_world_alias_resolves_default_transfer_targets(protocol, expected, tmp_path, backbones):
    small = "{train_per_class: 16, val_per_class: 2, test_per_class: 3}"
    cfg = resolve_config("coop", [
        "backbone.name=embedded", "data.name=world", f"protocol.name={protocol}", f"data.options={small}",
        f"protocol.target_options={small}", f"output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}",
    ] + SHORT)
    r = execute_run(cfg, backbones).result
    assert set(r["splits"]) == {"source"} | expected
    for name in expected:  # every class of each target is evaluated
        assert len(r["splits"][name]["per_class_accuracy"]) == load_dataset(name, None, {}).num_classes


def test_maple_trains_end_to_end_on_the_embedded_vit(tmp_path, backbones):
    small = "{train_per_class: 16, val_per_class: 2, test_per_class: 2}"
    cfg = resolve_config("maple", [
        "backbone.name=embedded-vit", "data.name=world", f"data.options={small}", f"output_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'c'}",
    ] + SHORT)
    r = execute_run(cfg, backbones).result
    assert r["backbone"]["name"] == "embedded-vit" and r["dataset"] == "world"
    curve = r["loss_curve"]["total"]
    assert len(curve) == 1 and curve[0] == curve[0]  # one step, finite
    assert len(r["splits"]["base"]["per_class_accuracy"]) == 36 and len(r["splits"]["new"]["per_class_accuracy"]) == 36
