"""ECE / MCE / adaptive ECE / reliability bins, NLL, temperature scaling, DAC and the split block."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tailprompt.metrics import (
    adaptive_ece,
    apply_dac_scaling,
    dac_logit_scaling,
    expected_calibration_error,
    fit_temperature,
    max_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    split_metrics,
)


def crafted():
    """Five samples with known top-label confidences and correctness."""
    probs = torch.tensor(
        [
            [0.95, 0.05, 0.00, 0.00],  # conf .95, correct
            [0.05, 0.95, 0.00, 0.00],  # conf .95, wrong (label 0)
            [0.65, 0.35, 0.00, 0.00],  # conf .65, correct
            [0.30, 0.25, 0.25, 0.20],  # conf exactly .30: bin (.2, .3], correct
            [0.20, 0.60, 0.10, 0.10],  # conf .60: bin (.5, .6], wrong (label 0)
        ]
    )
    labels = torch.tensor([0, 0, 0, 0, 0])
    return probs, labels


def test_ece_on_crafted_example():
    probs, labels = crafted()
    # bins: (.9,1]: acc 1/2 conf .95 -> gap .45, weight 2/5; (.6,.7]: 1 vs .65 -> .35, 1/5;
    # (.5,.6]: 0 vs .6 -> .6, 1/5; (.2,.3]: 1 vs .3 -> .7, 1/5
    expected = (2 / 5 * 0.45 + 0.35 / 5 + 0.6 / 5 + 0.7 / 5) * 100
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-4)
    bins = reliability_bins(probs, labels)
    assert bins["counts"] == [0, 0, 1, 0, 0, 1, 1, 0, 0, 2]  # .30 sits in (.2, .3], .60 in (.5, .6]
    assert bins["bin_edges"] == pytest.approx([i / 10 for i in range(11)])
    assert bins["accuracy"][9] == pytest.approx(0.5) and bins["confidence"][9] == pytest.approx(0.95)
    assert bins["accuracy"][0] == 0.0 and bins["confidence"][0] == 0.0  # empty bin


def test_mce_weighted_and_textbook():
    probs, labels = crafted()
    assert max_calibration_error(probs, labels) == pytest.approx(18.0, abs=1e-4)  # max (n_j/N)|gap| = .4*.45
    assert max_calibration_error(probs, labels, weighted=False) == pytest.approx(70.0, abs=1e-4)


def test_perfectly_calibrated_bins_give_zero_ece():
    # 10 samples at confidence .8 (in (.7, .8]), 8 correct
    probs = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-4)
    assert adaptive_ece(probs, labels) == pytest.approx(0.0, abs=1e-4)


def test_ece_agrees_with_torchmetrics_on_softmax_probabilities():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassCalibrationError

    gen = torch.Generator().manual_seed(0)
    for n_bins in (10, 15):
        logits = 3 * torch.randn(500, 7, generator=gen)
        labels = torch.randint(0, 7, (500,), generator=gen)
        probs = logits.softmax(dim=1)
        reference = MulticlassCalibrationError(num_classes=7, n_bins=n_bins, norm="l1")(probs, labels).item()
        assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(100 * reference, abs=1e-3)
        reference_max = MulticlassCalibrationError(num_classes=7, n_bins=n_bins, norm="max")(
            probs, labels
        ).item()
        assert max_calibration_error(probs, labels, n_bins, weighted=False) == pytest.approx(
            100 * reference_max, abs=1e-3
        )
    assert torchmetrics is not None


def test_adaptive_ece_uses_equal_mass_bins():
    # 4 samples, 2 bins of 2 by confidence: {.55 wrong, .6 right} and {.9 right, .95 right}
    probs = torch.tensor([[0.55, 0.45], [0.6, 0.4], [0.9, 0.1], [0.95, 0.05]])
    labels = torch.tensor([1, 0, 0, 0])
    expected = (0.5 * abs(0.5 - 0.575) + 0.5 * abs(1.0 - 0.925)) * 100
    assert adaptive_ece(probs, labels, n_bins=2) == pytest.approx(expected, abs=1e-4)
    # two equal-width bins put all four in (.5, 1], where accuracy and confidence are both .75
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(
        abs(0.75 - 0.75) * 100, abs=1e-4
    )


def test_nll_and_fitted_temperature_recovers_overconfidence():
    gen = torch.Generator().manual_seed(1)
    true_logits = 2 * torch.randn(4000, 5, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).squeeze(1)
    overconfident = 3.0 * true_logits
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    nll_fit = negative_log_likelihood(overconfident / t, labels)
    assert nll_fit < negative_log_likelihood(overconfident, labels)
    assert nll_fit <= negative_log_likelihood(overconfident / (t * 1.1), labels)
    assert nll_fit <= negative_log_likelihood(overconfident / (t / 1.1), labels)
    assert negative_log_likelihood(torch.tensor([[0.0, 0.0]]), torch.tensor([1])) == pytest.approx(
        math.log(2)
    )


def test_fitted_temperature_stays_bounded_on_degenerate_held_out_sets():
    all_correct = fit_temperature(torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.tensor([0, 1]))
    chance = fit_temperature(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    assert 0.01 <= all_correct < 0.5
    assert 10.0 < chance <= 100.0


def test_dac_factors_match_the_reference_formula():
    gen = torch.Generator().manual_seed(2)
    base_zs = F.normalize(torch.randn(7, 6, generator=gen, dtype=torch.float64), dim=-1)
    base_ft = F.normalize(torch.randn(7, 6, generator=gen, dtype=torch.float64), dim=-1)
    new_zs = F.normalize(torch.randn(3, 6, generator=gen, dtype=torch.float64), dim=-1)
    new_ft = F.normalize(torch.randn(3, 6, generator=gen, dtype=torch.float64), dim=-1)
    current_zs = torch.cat([new_zs, base_zs[:1]])
    current_ft = torch.cat([new_ft, base_ft[:1]])  # last class is a base class
    factors = dac_logit_scaling(base_zs, current_zs, base_ft, current_ft, k=5)
    for c in range(3):
        d_zs = sorted((current_zs[c] - base_zs).norm(dim=1).tolist())[:5]
        d_ft = sorted((current_ft[c] - base_ft).norm(dim=1).tolist())[:5]
        expected = math.exp(-sum(d_ft) / 5) / math.exp(-sum(d_zs) / 5)
        assert factors[c].item() == pytest.approx(expected, rel=1e-9)
    assert factors[3].item() == 1.0  # nearest tuned base feature closer than 0.05


def test_apply_dac_scaling_scales_rows_by_predicted_class():
    logits = torch.tensor([[10.0, 20.0], [30.0, 5.0]])
    scaled = apply_dac_scaling(logits, torch.tensor([0.5, 2.0]))
    assert scaled.tolist() == [[20.0, 40.0], [15.0, 2.5]]
    assert torch.equal(scaled.argmax(1), logits.argmax(1))


def test_split_metrics_block():
    gen = torch.Generator().manual_seed(3)
    logits = 10 * torch.randn(40, 3, generator=gen)
    labels = torch.randint(0, 2, (40,), generator=gen)  # class "c" has no test image
    block = split_metrics(logits, labels, ["a", "b", "c"])
    assert list(block) == [
        "classnames",
        "accuracy",
        "per_class_accuracy",
        "ece",
        "mce",
        "aece",
        "nll",
        "reliability",
    ]
    probs = logits.softmax(1)
    assert block["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert block["aece"] == pytest.approx(adaptive_ece(probs, labels))
    assert block["per_class_accuracy"]["c"] is None
    assert set(block["reliability"]) == {"bin_edges", "counts", "accuracy", "confidence"}
    assert sum(block["reliability"]["counts"]) == 40
    with pytest.raises(ValueError, match="class names"):
        split_metrics(logits, labels, ["a", "b"])


def _saturated_two_class(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """15 % of the samples at confidence 1.0 (80 % right), the rest under-confident: the top two quantile
    edges tie, and the bins they would split have gaps of opposite sign."""
    gen = torch.Generator().manual_seed(seed)
    low = 0.5 + 0.495 * torch.rand(850, generator=gen, dtype=torch.float64)
    conf = torch.cat([low, torch.ones(150, dtype=torch.float64)]).float()
    right = torch.rand(1000, generator=gen, dtype=torch.float64) < torch.where(conf == 1.0, 0.8, conf + 0.05)
    return torch.stack([conf, 1 - conf], dim=1), torch.where(right, 0, 1)


@pytest.mark.parametrize("case", ["random", "saturated"])
def test_adaptive_ece_bins_match_sklearn_quantile_discretizer(case):
    """TCPT's evaluator bins confidences with KBinsDiscretizer(strategy="quantile") (linear quantiles; edges
    at most 1e-8 above the previous one dropped, so tied top confidences share one bin)."""
    import warnings

    import numpy as np
    from sklearn.preprocessing import KBinsDiscretizer

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 7, generator=gen), dim=-1)
    labels = torch.randint(0, 7, (500,), generator=gen)
    if case == "saturated":
        probs, labels = _saturated_two_class(0)
    conf, pred = probs.max(dim=1)
    kwargs = {"quantile_method": "linear"} if "quantile_method" in KBinsDiscretizer().get_params() else {}
    disc = KBinsDiscretizer(n_bins=10, encode="ordinal", strategy="quantile", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's note that it merged bins
        bins = disc.fit_transform(conf.double().numpy()[:, None])[:, 0].astype(int)
    correct = (pred == labels).double().numpy()
    c = conf.double().numpy()
    expected = sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - c[bins == b].mean()) for b in np.unique(bins)
    ) * 100
    assert adaptive_ece(probs, labels, n_bins=10) == pytest.approx(expected, abs=1e-6)


def _dac_repo_temperature_scaling(cos, labels, epochs=20, lr=0.05, batch=100):
    """The DAC repository's TempScaling on cosines, written out: a learnable log scale from 4.6052 trained with
    CE by Dassl's SGD (momentum 0.9, weight decay 5e-4), one constant warm-up epoch at 1e-5, then the cosine
    restarted from its step 0, sequential batches."""
    import math

    s = torch.nn.Parameter(torch.tensor(4.6052))
    opt = torch.optim.SGD([s], lr=lr, momentum=0.9, weight_decay=5e-4)
    for epoch in range(epochs):
        rate = 1e-5 if epoch == 0 else lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
        for group in opt.param_groups:
            group["lr"] = rate
        for start in range(0, cos.shape[0], batch):
            loss = torch.nn.functional.cross_entropy(s.exp() * cos[start:start + batch], labels[start:start + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(s.detach().exp())


def test_the_dac_repos_temperature_recipe_is_reproduced():
    from tailprompt.engine.optim import lr_at_epoch
    from tailprompt.engine.run import DAC_TEMPERATURE_OPTIM
    from tailprompt.metrics import fit_logit_scale_sgd

    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (250,), generator=gen)
    cos = 0.2 + 0.05 * torch.randn(250, 10, generator=gen)
    cos[torch.arange(250), labels] += 0.03  # CLIP-like: small margins, over-confident at scale 100
    o = DAC_TEMPERATURE_OPTIM
    got = fit_logit_scale_sgd(cos, labels, [lr_at_epoch(e, o) for e in range(o.epochs)], o.batch_size)
    assert got == pytest.approx(_dac_repo_temperature_scaling(cos, labels), rel=1e-6)
    exact = fit_temperature(100 * cos, labels)  # the NLL optimum, as a temperature of scale-100 logits
    assert 100 / got != pytest.approx(exact, rel=1e-3)  # 20 epochs of SGD stop short of it
