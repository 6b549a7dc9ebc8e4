"""Predictive distributions at the posterior mean and over posterior samples, and their calibration metrics."""

from .metrics import brier_score, calibration_metrics, expected_calibration_error
from .predict import evaluate_predictive, predict_probs

__all__ = [
    "brier_score",
    "calibration_metrics",
    "evaluate_predictive",
    "expected_calibration_error",
    "predict_probs",
]
