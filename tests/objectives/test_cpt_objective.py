"""CPT: L_TETF, L_CC, L_RS against hand-worked cases, and the frozen semantic clusters."""

from __future__ import annotations

import pytest
import torch

from clustering_fixtures import grouped_prototypes, same_partition
from tailprompt.objectives import OBJECTIVES
from tailprompt.objectives.cpt import (
    CPTConfig,
    cross_modal_convergence_loss,
    intra_cluster_etf_loss,
    rotation_stability_loss,
)
from tailprompt.schema import ConfigError, from_dict

from .conftest import build_terms


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------- L_TETF


def test_exact_simplex_etf_has_zero_off_diagonal_deviation(etf):
    g = etf(6, 16)
    one = torch.zeros(6, dtype=torch.long)
    assert intra_cluster_etf_loss(g, one, diagonal=False).item() == pytest.approx(0.0, abs=1e-12)
    # the paper's Frobenius norm keeps the unit diagonal: K / M = 6 / 1
    assert intra_cluster_etf_loss(g, one).item() == pytest.approx(6.0, abs=1e-12)


def test_per_cluster_etfs_in_orthogonal_subspaces_are_optimal(etf):
    # cluster 0: a 3-class ETF in dims 0..3, cluster 1: a 4-class ETF in dims 4..7
    g = torch.zeros(7, 8, dtype=torch.float64)
    g[:3, :4] = etf(3, 4, seed=1)
    g[3:, 4:] = etf(4, 4, seed=2)
    clusters = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert intra_cluster_etf_loss(g, clusters, diagonal=False).item() == pytest.approx(0.0, abs=1e-12)
    assert intra_cluster_etf_loss(g, clusters).item() == pytest.approx(7 / 2, abs=1e-12)
    # the same features under one global cluster are far from a 7-class ETF
    assert intra_cluster_etf_loss(g, torch.zeros(7, dtype=torch.long), diagonal=False).item() > 0.1


def test_tetf_hand_worked():
    # cluster {0, 1}: cos = 0, target -1 -> (0 + 1)^2 for each ordered pair = 2; cluster {2}: nothing
    g = t([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # unnormalised on purpose
    clusters = torch.tensor([0, 0, 1])
    assert intra_cluster_etf_loss(g, clusters, diagonal=False).item() == pytest.approx(2 / 2)
    # diagonal: k_0 + k_1 = 2 + 1 = 3, so (2 + 3) / M=2
    assert intra_cluster_etf_loss(g, clusters).item() == pytest.approx(5 / 2)
    # a 3-class cluster with cos(0,1)=0, cos(0,2)=1, cos(1,2)=0, target -1/2:
    # 2 * [(0 + .5)^2 + (1 + .5)^2 + (0 + .5)^2] = 2 * 2.75 = 5.5
    assert intra_cluster_etf_loss(
        g, torch.zeros(3, dtype=torch.long), diagonal=False
    ).item() == pytest.approx(5.5)


def test_single_class_cluster_contributes_nothing():
    torch.manual_seed(0)
    g = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    clusters = torch.tensor([0, 0, 1, 2, 2])  # class 2 is alone
    loss = intra_cluster_etf_loss(g, clusters, diagonal=False)
    loss.backward()
    assert torch.all(g.grad[2] == 0)
    assert g.grad[[0, 1, 3, 4]].abs().sum() > 0
    # value: the other clusters' deviation, still averaged over all M = 3 clusters (the paper's 1/M)
    keep = [0, 1, 3, 4]
    without = intra_cluster_etf_loss(g.detach()[keep], torch.tensor([0, 0, 2, 2]), diagonal=False)
    assert loss.item() * 3 == pytest.approx(without.item() * 2)


def test_tetf_gradient_pushes_cluster_apart():
    g = torch.tensor([[1.0, 0.1], [1.0, -0.1]], requires_grad=True)
    before = intra_cluster_etf_loss(g, torch.tensor([0, 0])).item()
    for _ in range(20):  # plain gradient descent
        (grad,) = torch.autograd.grad(intra_cluster_etf_loss(g, torch.tensor([0, 0])), g)
        g = (g - 0.05 * grad).detach().requires_grad_(True)
    after = intra_cluster_etf_loss(g, torch.tensor([0, 0])).item()
    assert after < before
    cos = torch.nn.functional.cosine_similarity(g[0], g[1], dim=0).item()
    assert cos < 0.5  # started at ~0.98, target -1


def test_tetf_instance_conditioned_is_mean_over_images():
    torch.manual_seed(1)
    per_image = torch.randn(3, 6, 5)
    clusters = torch.tensor([0, 0, 1, 1, 1, 2])
    expected = torch.stack([intra_cluster_etf_loss(per_image[b], clusters) for b in range(3)]).mean()
    assert intra_cluster_etf_loss(per_image, clusters).item() == pytest.approx(expected.item())


# ----------------------------------------------------------------------------- L_CC


def test_cc_hand_worked_and_class_balanced():
    g = t([[1.0, 0.0], [0.0, 1.0]])
    # class 0: two images, at distance^2 0 and 2 (orthogonal) -> mean 1; class 1: one image at 0
    f = t([[2.0, 0.0], [0.0, 5.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    # mean over classes present (1 + 0) / 2, not over samples (0 + 2 + 0) / 3
    assert cross_modal_convergence_loss(f, labels, g).item() == pytest.approx(0.5)
    # squared distance summed over dimensions: opposite unit vectors are 4 apart
    assert cross_modal_convergence_loss(t([[-1.0, 0.0]]), torch.tensor([0]), g).item() == pytest.approx(4.0)


def test_cc_ignores_absent_classes_and_uses_per_image_class_feature():
    g = torch.nn.functional.normalize(
        torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    f = torch.nn.functional.normalize(torch.randn(2, 3, generator=torch.Generator().manual_seed(4)), dim=-1)
    labels = torch.tensor([2, 2])
    expected = ((f[0] - g[0, 2]) ** 2).sum() / 2 + ((f[1] - g[1, 2]) ** 2).sum() / 2
    assert cross_modal_convergence_loss(f, labels, g).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- L_RS


def test_rs_hand_worked():
    g = t([[1.0, 0.0], [0.0, 3.0]])
    frozen = t([[0.0, 1.0], [0.0, 1.0]])
    # class 0: |1 - 0| + |0 - 1| = 2; class 1: normalised equal -> 0; mean over K = 1
    assert rotation_stability_loss(g, frozen).item() == pytest.approx(1.0)
    assert rotation_stability_loss(frozen * 7, frozen).item() == pytest.approx(0.0)


def test_rs_instance_conditioned_matches_per_image_mean():
    gen = torch.Generator().manual_seed(5)
    per_image, frozen = torch.randn(3, 4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    expected = sum(rotation_stability_loss(per_image[b], frozen) for b in range(3)) / 3
    assert rotation_stability_loss(per_image, frozen).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- registered objective


def test_cpt_config_from_dict():
    assert from_dict(CPTConfig, {"n_clusters": "auto"}).n_clusters == "auto"
    assert from_dict(CPTConfig, {"n_clusters": 4}).n_clusters == 4
    with pytest.raises(ConfigError, match="n_clusters"):
        from_dict(CPTConfig, {"n_clusters": "many"})
    with pytest.raises(ConfigError, match="n_clusters"):
        from_dict(CPTConfig, {"n_clusters": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(CPTConfig, {"clusters": 4})


def test_cpt_config_bounds_cluster_sizes():
    with pytest.raises(ConfigError, match="max_cluster_size"):
        from_dict(CPTConfig, {"min_cluster_size": 3, "max_cluster_size": 2})
    settings = from_dict(CPTConfig, {"n_clusters": 3, "cluster_seed": 5}).cluster_settings()
    assert (settings.n_clusters, settings.seed, settings.min_cluster_size) == (3, 5, 2)


def test_cpt_uses_the_partition_delivered_in_the_step_state(state_factory):
    spec = OBJECTIVES.get("cpt")
    assert spec.needs_clusters
    assert spec.default_weights == {"tetf": 0.25, "cc": 0.15, "rs": 0.10}
    protos, truth = grouped_prototypes([3, 3, 3])
    config = from_dict(spec.config_cls, {"n_clusters": 3})
    partition = config.cluster_settings().select(protos)
    assert same_partition(partition.assignment.tolist(), truth)
    terms = build_terms("cpt", config, protos, partition)

    learned = (protos + 0.1 * torch.randn(9, 16)).requires_grad_(True)
    frozen = protos.clone().requires_grad_(True)
    images = torch.randn(6, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 3, 4, 8, 8])
    state = state_factory(learned, frozen, images, labels)
    state.clusters = partition.assignment
    out = terms(state)
    assert set(out) == {"tetf", "cc", "rs"}
    assert out["tetf"].item() == pytest.approx(intra_cluster_etf_loss(state.text_feats, partition.assignment).item())
    other = state_factory(learned, frozen, images, labels)
    other.clusters = torch.zeros(9, dtype=torch.long)  # a different partition changes the term
    assert terms(other)["tetf"].item() != pytest.approx(out["tetf"].item())
    sum(out.values()).backward()
    assert frozen.grad is None  # the frozen prototypes are a constant
    assert learned.grad.abs().sum() > 0 and images.grad.abs().sum() > 0


def test_cpt_without_a_partition_says_so(state_factory):
    protos, _ = grouped_prototypes([3, 3])
    state = state_factory(protos.clone(), protos, torch.randn(2, 16), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="clusters"):
        build_terms("cpt")(state)
