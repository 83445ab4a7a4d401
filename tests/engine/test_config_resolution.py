import pytest

from tailprompt.engine.resolve import list_presets, resolve_config, run_id
from tailprompt.schema import ConfigError

PAPER_PRESETS = {
    "zeroshot", "coop", "coop_fewshot", "cocoop", "kgcoop", "maple", "maple_xd", "cpt_coop", "cpt_maple",
    "npt_coop", "npt_cocoop", "npt_maple", "tcpt_coop", "tcpt_maple", "tcpt_kgcoop", "global_etf_coop",
    "zsnorm_coop", "penalty_coop", "cpt_tcpt_coop",
}


def test_every_paper_row_has_a_preset_that_resolves():
    assert PAPER_PRESETS <= set(list_presets())
    for name in list_presets():
        cfg = resolve_config(name)
        assert cfg.method == name


def test_preset_defaults_match_the_references():
    coop = resolve_config("coop")
    assert (coop.optim.lr, coop.optim.epochs, coop.optim.batch_size) == (0.002, 200, 32)
    assert coop.optim.momentum == 0.9 and coop.optim.weight_decay == 5e-4 and coop.optim.warmup_lr == 1e-5
    maple = resolve_config("maple")
    assert (maple.optim.lr, maple.optim.epochs, maple.optim.batch_size) == (0.0035, 5, 4)
    assert maple.learner.options.prompt_depth == 9
    kg = resolve_config("kgcoop")
    assert (kg.optim.epochs, kg.optim.batch_size) == (100, 128)
    assert [o.name for o in resolve_config("cpt_tcpt_coop").objectives] == ["cross_entropy", "cpt", "tcpt"]


def test_overrides_and_unknown_keys():
    cfg = resolve_config("coop", ["data.tau=0.06", "seed=3", "learner.n_ctx=4"])
    assert cfg.data.tau == 0.06 and cfg.seed == 3
    with pytest.raises(ConfigError, match="tauu"):
        resolve_config("coop", ["data.tauu=0.06"])
    with pytest.raises(ConfigError, match="learner"):
        resolve_config("coop", ["learner.n_cttx=4"])
    with pytest.raises(ConfigError, match="objectives\\[1\\]"):
        resolve_config("cpt_coop", ["objectives.1.weights.nope=1.0"])
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("no_such_preset")


def test_user_file_extends_a_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("preset: cpt_coop\ndata: {tau: 0.25}\n")
    cfg = resolve_config(str(f))
    assert cfg.method == "cpt_coop" and cfg.data.tau == 0.25
    assert [o.name for o in cfg.objectives] == ["cross_entropy", "cpt"]


def test_run_id_depends_on_config_and_backbone_not_output_dir():
    a = resolve_config("coop", ["output_dir=a"])
    b = resolve_config("coop", ["output_dir=b"])
    c = resolve_config("coop", ["seed=2"])
    assert run_id(a, "x") == run_id(b, "x")
    assert run_id(a, "x") != run_id(c, "x")
    assert run_id(a, "x") != run_id(a, "y")
