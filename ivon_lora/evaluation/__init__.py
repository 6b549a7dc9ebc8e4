"""Predictive distributions at the posterior mean and over posterior samples, and their calibration metrics;
confidence scores of generated answers (`uncertainty`) and their selective-generation metrics (`selective`)."""

import os

from .metrics import (
    binary_calibration_error,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    risk_coverage,
    selective_prediction,
)
from .predict import Predictions, evaluate_predictive, predict, predict_probs
from .selective import SELECTIVE_METRICS, selective_generation_metrics
from .uncertainty import CONFIDENCE_SCORES

CALIBRATION_MODULE_DIR = os.path.join(os.path.dirname(__file__), "evaluate_modules", "calibration")


def load_calibration_metric(**kwargs):
    """The calibration metrics as an `evaluate` module (compute / add_batch / combine), loaded offline."""
    import evaluate

    return evaluate.load(CALIBRATION_MODULE_DIR, **kwargs)


__all__ = [
    "CALIBRATION_MODULE_DIR",
    "CONFIDENCE_SCORES",
    "SELECTIVE_METRICS",
    "Predictions",
    "binary_calibration_error",
    "brier_score",
    "calibration_metrics",
    "evaluate_predictive",
    "expected_calibration_error",
    "load_calibration_metric",
    "predict",
    "predict_probs",
    "risk_coverage",
    "selective_generation_metrics",
    "selective_prediction",
]
