"""Per-dataset tables of presets: applied by dataset name, under the user's own settings."""

from __future__ import annotations

import pytest
import yaml

from tailprompt.engine.per_dataset import apply_dataset_table, flat_entry, indexed_path
from tailprompt.engine.resolve import resolve_config
from tailprompt.schema import ConfigError

BASE = {
    "data": {"name": "eurosat"},
    "learner": {"name": "maple", "n_ctx": 2, "prompt_depth": 9},
    "objectives": [{"name": "cross_entropy"}, {"name": "kgcoop", "weights": {"guidance": 8.0}}],
    "optim": {"epochs": 5},
}
TABLE = {
    "eurosat": {"learner": {"prompt_depth": 12}, "objectives.kgcoop.weights": {"guidance": 0.1}},
    "food101": {"optim": {"epochs": 3}},
}
DATASETS = ["eurosat", "food101", "dtd"]


def applied(explicit=(), dataset="eurosat", table=TABLE, check=None):
    import copy

    data = copy.deepcopy(BASE)
    data["per_dataset"] = table
    return apply_dataset_table(data, [p.split(".") for p in explicit], dataset, DATASETS, check)


def test_mapping_values_merge_key_by_key():
    assert flat_entry({"learner": {"n_ctx": 2, "prompt_depth": 12}, "optim.epochs": 5}) == {
        "learner.n_ctx": 2, "learner.prompt_depth": 12, "optim.epochs": 5,
    }


def test_objectives_are_addressed_by_name_or_index():
    assert indexed_path(BASE, "objectives.kgcoop.weights.guidance", "w") == ["objectives", "1", "weights", "guidance"]
    assert indexed_path(BASE, "objectives.0.name", "w") == ["objectives", "0", "name"]
    with pytest.raises(ConfigError, match=r"w: objectives has no entries named 'cpt' \(names: cross_entropy, kgcoop\)"):
        indexed_path(BASE, "objectives.cpt.weights", "w")


def test_the_row_of_the_runs_dataset_is_applied_and_the_table_leaves():
    out = applied()
    assert "per_dataset" not in out
    assert out["learner"] == {"name": "maple", "n_ctx": 2, "prompt_depth": 12}  # n_ctx kept: merged, not replaced
    assert out["objectives"][1]["weights"] == {"guidance": 0.1}
    assert out["optim"] == {"epochs": 5}  # food101's row does not apply
    assert applied(dataset="dtd")["learner"]["prompt_depth"] == 9  # no row: the preset's values


@pytest.mark.parametrize(
    ("explicit", "depth", "weight"),
    [
        (["learner.prompt_depth"], 9, 0.1),  # the key itself
        (["learner"], 9, 0.1),  # a section above it
        (["objectives"], 12, 8.0),  # the list the named entry lives in
        (["objectives.1.weights.guidance"], 12, 8.0),  # by index, where the row names it
        (["learner.n_ctx"], 12, 0.1),  # a sibling key does not block
    ],
)
def test_a_key_the_user_sets_keeps_the_users_value(explicit, depth, weight):
    out = applied(explicit)
    assert out["learner"]["prompt_depth"] == depth
    assert out["objectives"][1]["weights"]["guidance"] == weight


def test_every_row_is_checked_and_an_unknown_dataset_is_named():
    def check(data):
        if data["optim"]["epochs"] == 3:
            raise ConfigError("optim.epochs: pretend 3 is invalid")

    with pytest.raises(ConfigError, match=r"per_dataset.food101: optim.epochs: pretend"):
        applied(check=check)  # a fault in another dataset's row is found now
    with pytest.raises(ConfigError, match=r"per_dataset: unknown dataset 'eurostat'"):
        applied(table={"eurostat": {"optim": {"epochs": 1}}})
    assert applied(table=None)["learner"]["prompt_depth"] == 9


# ----- through resolve_config -----


def user_file(tmp_path, data):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_resolve_applies_the_coprompt_table_with_the_reference_values():
    cfg = resolve_config("coprompt", ["data.name=eurosat"])
    assert (cfg.learner.options.prompt_depth, cfg.learner.options.n_ctx) == (12, 2)
    coprompt = next(o for o in cfg.objectives if o.name == "coprompt")
    assert coprompt.weights == {"text": 0.1, "image": 0.1}
    food = resolve_config("coprompt", ["data.name=food101"])
    assert food.optim.epochs == 5 and food.learner.options.n_ctx == 4
    plain = resolve_config("coprompt", ["data.name=world"])
    assert (plain.learner.options.prompt_depth, plain.optim.epochs) == (9, 8)


def test_resolve_lets_the_users_file_and_overrides_win(tmp_path):
    path = user_file(tmp_path, {"preset": "coprompt", "data": {"name": "eurosat"}, "learner": {"prompt_depth": 6}})
    cfg = resolve_config(path, ["learner.n_ctx=3"])
    assert (cfg.learner.options.prompt_depth, cfg.learner.options.n_ctx) == (6, 3)
    assert next(o for o in cfg.objectives if o.name == "coprompt").weights == {"text": 0.1, "image": 0.1}
    off = resolve_config("coprompt", ["data.name=eurosat", "per_dataset=null"])
    assert off.learner.options.prompt_depth == 9


def test_a_coprompt_run_on_eurosat_trains_with_the_table_and_a_gpt_file_folder(
    base_overrides, eurosat_descriptions, eurosat_root, capsys
):
    import json

    from tailprompt.cli import main
    from tailprompt.engine.run import execute_run

    overrides = base_overrides + [
        "optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false",
        f"data.descriptions={eurosat_descriptions.parent}",  # the folder: eurosat_prompt.json is picked
    ]
    out = execute_run(resolve_config("coprompt", overrides))
    r = out.result
    assert r["config"]["learner"]["prompt_depth"] == 12 and r["config"]["learner"]["n_ctx"] == 2
    assert r["config"]["objectives"][1]["weights"] == {"text": 0.1, "image": 0.1}
    for term in ("coprompt/text", "coprompt/image"):
        assert 0.0 <= r["loss_curve"][term][0] <= 2.0  # 1 - mean cosine
    # the saved prompts (adapters included) reload for evaluation and give the same new-class accuracy
    argv = ["eval", "--run", str(out.run_dir), "--dataset", "eurosat", "--root", str(eurosat_root), "--classes", "new"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(r["splits"]["new"]["accuracy"])
