"""The claims checker reads run records as they are and answers each claim from its numbers."""

from __future__ import annotations

from tailprompt.world.claims import claims, geometry_rows, render_markdown


def _record(method: str, tau: float, seed: int, hm: float, ece_new: float, acc_new: float) -> dict:
    return {
        "method": method, "tau": tau, "seed": seed, "hm": hm,
        "splits": {"base": {"accuracy": hm, "ece": 1.0}, "new": {"accuracy": acc_new, "ece": ece_new}},
        "geometry": {"learned": {"effective_rank": 5.0 + seed, "intra_cluster_cosine": 0.8,
                                 "inter_cluster_cosine": 0.2 if method != "global_etf_coop" else 0.7}},
    }


def _runs(cpt_lead: dict[float, float], cpt_spread: float, npt_spread: float) -> list[dict]:
    out = []
    for tau in (1.0, 0.06):
        for seed, sign in ((1, -1), (2, 1)):
            out.append(_record("coop", tau, seed, 60.0, 10.0, 50.0))
            out.append(_record("cpt_coop", tau, seed, 60.0 + cpt_lead[tau] + sign * cpt_spread, 9.0, 50.0))
            out.append(_record("npt_coop", tau, seed, 60.0 + sign * npt_spread, 9.0, 50.0))
            out.append(_record("tcpt_coop", tau, seed, 60.0, 6.0, 51.0))
            out.append(_record("cpt_tcpt_coop", tau, seed, 61.0, 7.0, 50.0))
            out.append(_record("global_etf_coop", tau, seed, 55.0, 12.0, 45.0))
    return out


def test_each_claim_follows_the_numbers_in_both_directions():
    holds = {c["claim"]: c["holds"] for c in claims(_runs({1.0: 0.5, 0.06: 3.0}, 0.2, 1.0))}
    assert all(holds.values()), holds
    fails = claims(_runs({1.0: 3.0, 0.06: 0.5}, 1.0, 0.2))
    assert [c["holds"] for c in fails[:2]] == [False, False]
    lead = fails[0]["lead_by_tau"]
    assert abs(lead[1.0] - 3.0) < 1e-9 and abs(lead[0.06] - 0.5) < 1e-9


def test_missing_methods_give_no_answer_rather_than_a_wrong_one():
    only_coop = [r for r in _runs({1.0: 0.0, 0.06: 0.0}, 0.1, 0.1) if r["method"] == "coop"]
    assert all(c["holds"] is None for c in claims(only_coop))


def test_geometry_rows_and_markdown_show_flattened_clusters_for_global_etf():
    runs = _runs({1.0: 0.5, 0.06: 3.0}, 0.2, 1.0)
    rows = {(g["method"], g["tau"]): g for g in geometry_rows(runs)}
    assert abs(rows[("coop", 1.0)]["cluster_structure"] - 0.6) < 1e-9
    assert abs(rows[("global_etf_coop", 1.0)]["cluster_structure"] - 0.1) < 1e-9
    assert rows[("coop", 0.06)]["effective_rank"] == 6.5  # mean over seeds 1 and 2
    text = render_markdown(runs)
    assert "| CPT's HM lead over CoOp grows as tau falls | yes |" in text
    assert "| global_etf_coop | 6.50 | 0.10 | 6.50 | 0.10 |" in text


def _on(runs: list[dict], backbone: str, base: str) -> list[dict]:
    return [{**r, "method": r["method"].replace("coop", base), "backbone": {"name": backbone}} for r in runs]


def test_each_base_learners_family_is_answered_within_its_own_backbone():
    conv = _on(_runs({1.0: 0.5, 0.06: 3.0}, 0.2, 1.0), "embedded", "coop")
    vit = _on(_runs({1.0: 3.0, 0.06: 0.5}, 1.0, 0.2), "embedded-vit", "maple")
    assert [c["holds"] for c in claims(vit, "maple")[:2]] == [False, False]
    assert all(c["holds"] is None for c in claims(vit, "coop"))
    text = render_markdown(conv + vit)
    conv_part, vit_part = text.split("#### The seeds' claims on these runs (embedded-vit)")
    assert "| CPT's HM lead over CoOp grows as tau falls | yes |" in conv_part and "MaPLe" not in conv_part
    assert "| CPT's HM lead over MaPLe grows as tau falls | no |" in vit_part and "| coop |" not in vit_part
