"""Accuracy, calibration and neural-collapse geometry metrics (plain functions, tensors in, floats out)."""

from tailprompt.metrics.calibration import (
    adaptive_ece,
    apply_dac_scaling,
    dac_logit_scaling,
    expected_calibration_error,
    fit_logit_scale_sgd,
    fit_temperature,
    max_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    split_metrics,
)
from tailprompt.metrics.classification import (
    group_accuracy,
    harmonic_mean,
    per_class_accuracy,
    shot_groups,
    threshold_groups,
    top1_accuracy,
)
from tailprompt.metrics.geometry import effective_rank, image_geometry, text_geometry

__all__ = [
    "adaptive_ece",
    "apply_dac_scaling",
    "dac_logit_scaling",
    "effective_rank",
    "expected_calibration_error",
    "fit_logit_scale_sgd",
    "fit_temperature",
    "group_accuracy",
    "harmonic_mean",
    "image_geometry",
    "max_calibration_error",
    "negative_log_likelihood",
    "per_class_accuracy",
    "reliability_bins",
    "shot_groups",
    "split_metrics",
    "text_geometry",
    "threshold_groups",
    "top1_accuracy",
]
