"""Text and image neural-collapse geometry on constructed configurations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tailprompt.metrics import effective_rank, image_geometry, text_geometry


def test_simplex_etf_has_zero_gaps_and_rank_k_minus_one(etf):
    g = etf(6, 10)
    geo = text_geometry(g)
    assert geo["lcd"] == pytest.approx(0.0, abs=1e-12)
    assert geo["global_etf_gap"] == pytest.approx(0.0, abs=1e-12)
    assert geo["mean_cosine"] == pytest.approx(-1 / 5) and geo["std_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert geo["effective_rank"] == pytest.approx(5.0)
    assert geo["cluster_etf_gap"] is None and geo["intra_cluster_cosine"] is None


def test_orthonormal_and_shifted_configurations():
    eye = torch.eye(4, dtype=torch.float64)
    geo = text_geometry(eye)
    assert geo["lcd"] == pytest.approx(1 / 3)  # |0 - (-1/3)|
    assert geo["effective_rank"] == pytest.approx(4.0)
    # a simplex plus a shared direction: cosines far from -1/(K-1), yet the centred shape is a simplex
    shifted = torch.cat([eye[:3] - eye[:3].mean(0), torch.ones(3, 1, dtype=torch.float64)], dim=1)
    geo = text_geometry(shifted)
    assert geo["lcd"] > 0.5
    assert geo["global_etf_gap"] == pytest.approx(0.0, abs=1e-12)


def test_effective_rank_of_collapsed_features_is_one():
    assert effective_rank(torch.ones(5, 5)) == pytest.approx(1.0)


def test_cluster_metrics(etf):
    g = torch.zeros(7, 8, dtype=torch.float64)
    g[:3, :4] = etf(3, 4, seed=1)
    g[3:6, 4:] = etf(3, 4, seed=2)
    g[6, 0] = 1.0  # a one-class cluster (ignored by the ETF gap), overlapping cluster 0's subspace
    clusters = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    geo = text_geometry(g, clusters)
    assert geo["cluster_etf_gap"] == pytest.approx(0.0, abs=1e-12)
    assert geo["intra_cluster_cosine"] == pytest.approx(-0.5)
    cos = (g / g.norm(dim=1, keepdim=True)) @ (g / g.norm(dim=1, keepdim=True)).T
    inter = [cos[i, j].item() for i in range(7) for j in range(7) if clusters[i] != clusters[j]]
    assert geo["inter_cluster_cosine"] == pytest.approx(sum(inter) / len(inter))
    with pytest.raises(ValueError, match="clusters"):
        text_geometry(g, clusters[:5])


def test_collapsed_images_on_their_text_features(etf):
    g = etf(4, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    geo = image_geometry(g[labels], labels, g)
    assert geo["mid"] == pytest.approx(0.0, abs=1e-12)
    assert geo["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert geo["cdnv"] == pytest.approx(0.0, abs=1e-12)
    assert geo["modality_gap"] == pytest.approx(0.0, abs=1e-12)  # balanced, so the centres coincide


@pytest.mark.parametrize("global_mean", ["samples", "class_means"])
def test_image_geometry_against_direct_formulas(global_mean):
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # imbalanced: the two global means differ
    images = text[labels] + 0.5 * torch.randn(9, 5, generator=gen, dtype=torch.float64)
    geo = image_geometry(images, labels, text, global_mean)
    h = (images / images.norm(dim=1, keepdim=True)).numpy()
    g = (text / text.norm(dim=1, keepdim=True)).numpy()
    y = labels.numpy()
    assert geo["mid"] == pytest.approx(np.mean(1 - (h * g[y]).sum(1)))
    means = np.stack([h[y == c].mean(0) for c in range(3)])
    # tding1's validate_NC.py: muG = mean of all features
    centre = h.mean(0) if global_mean == "samples" else means.mean(0)
    sw = sum(np.outer(h[i] - means[y[i]], h[i] - means[y[i]]) for i in range(9)) / 9
    sb = sum(np.outer(m - centre, m - centre) for m in means) / 3
    assert geo["nc1"] == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / 3, rel=1e-6)
    var = [np.mean(((h[y == c] - means[c]) ** 2).sum(1)) for c in range(3)]
    cdnv = np.mean(
        [
            (var[a] + var[b]) / (2 * ((means[a] - means[b]) ** 2).sum())
            for a, b in itertools.combinations(range(3), 2)
        ]
    )
    assert geo["cdnv"] == pytest.approx(cdnv, rel=1e-9)
    assert geo["modality_gap"] == pytest.approx(np.linalg.norm(h.mean(0) - g.mean(0)))


def test_single_class_images_leave_nc1_undefined():
    geo = image_geometry(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(2, 4))
    assert geo["nc1"] is None and geo["cdnv"] is None and geo["mid"] is not None
