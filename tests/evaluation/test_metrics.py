"""Calibration metrics against hand-computed cases and an independent plain-Python implementation."""

import math
import random

import pytest
import torch

from ivon_lora.evaluation.metrics import brier_score, calibration_metrics, expected_calibration_error


def reference_metrics(probs, gold, num_bins):
    """Written from the definitions with Python lists, independently of the tensor code."""
    n = len(gold)
    bins = [[] for _ in range(num_bins)]
    for row, y in zip(probs, gold):
        confidence = max(row)
        prediction = row.index(confidence)
        index = min(num_bins - 1, max(0, math.ceil(confidence * num_bins) - 1))  # bin (lo, hi]
        bins[index].append((confidence, prediction == y))
    ece = sum(len(b) / n * abs(sum(c for c, _ in b) / len(b) - sum(ok for _, ok in b) / len(b)) for b in bins if b)
    brier = sum(sum((p - (k == y)) ** 2 for k, p in enumerate(row)) for row, y in zip(probs, gold)) / n
    nll = -sum(math.log(row[y]) for row, y in zip(probs, gold)) / n
    accuracy = sum(row.index(max(row)) == y for row, y in zip(probs, gold)) / n
    return {"accuracy": accuracy, "nll": nll, "brier": brier, f"ece_{num_bins}": ece}


def test_hand_computed_case():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    gold = torch.tensor([0, 1, 1, 0])
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.55 (right); 10 bins: (0.8,0.9], (0.5,0.6] x2, (0.6,0.7]
    expected_ece = (abs(0.9 - 1) + 2 * abs((0.6 + 0.55) / 2 - 0.5) + abs(0.7 - 1)) / 4
    assert expected_calibration_error(probs, gold, 10) == pytest.approx(expected_ece)
    assert brier_score(probs, gold) == pytest.approx((0.02 + 0.72 + 0.18 + 0.405) / 4)
    metrics = calibration_metrics(probs, gold, ece_bins=(10,))
    assert metrics["accuracy"] == 0.75
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.55)) / 4)


def test_bin_edges_are_upper_inclusive():
    # 0.6 belongs to (0.5, 0.6], not (0.6, 0.7]: with both examples right, each bin's gap is 1 - 0.6 and 1 - 0.7.
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]], dtype=torch.float64)
    gold = torch.tensor([0, 0])
    assert expected_calibration_error(probs, gold, 10) == pytest.approx((0.4 + 0.3) / 2)


@pytest.mark.parametrize("num_bins", [10, 15, 20])
@pytest.mark.parametrize("num_classes", [2, 4, 5])
def test_random_predictions_match_the_independent_implementation(num_bins, num_classes):
    generator = torch.Generator().manual_seed(num_bins * 100 + num_classes)
    logits = torch.randn(500, num_classes, generator=generator, dtype=torch.float64) * 3
    probs = torch.softmax(logits, dim=1)
    gold = torch.randint(0, num_classes, (500,), generator=generator)
    expected = reference_metrics(probs.tolist(), gold.tolist(), num_bins)
    actual = calibration_metrics(probs, gold, ece_bins=(num_bins,))
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = random.Random(0)
    probs, gold = [], []
    for _ in range(20000):
        p = rng.uniform(0.5, 1.0)
        probs.append([p, 1 - p])
        gold.append(0 if rng.random() < p else 1)
    assert expected_calibration_error(torch.tensor(probs), torch.tensor(gold), 10) < 0.02


def test_bad_shapes_and_labels_are_errors():
    with pytest.raises(ValueError, match="Gold indices"):
        calibration_metrics(torch.full((2, 2), 0.5), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="No examples"):
        calibration_metrics(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_float32_confidences_on_a_bin_edge_stay_in_the_lower_bin():
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]], dtype=torch.float32)
    assert expected_calibration_error(probs, torch.tensor([0, 0]), 10) == pytest.approx((0.4 + 0.3) / 2, rel=1e-6)
