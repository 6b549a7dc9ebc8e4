"""Classification and calibration metrics of a predictive distribution (N x K probabilities, N gold indices).

All values are fractions (multiply by 100 for the papers' tables). ECE uses equal-width bins over the
confidence (the max probability), each bin (lo, hi], weighted by its share of examples; Brier is the squared
error summed over the K classes (not divided by K), averaged over examples (ivon-notes §3).
"""

from __future__ import annotations

import torch

DEFAULT_ECE_BINS = (10, 15)


def _check(probs: torch.Tensor, gold: torch.Tensor) -> None:
    if probs.ndim != 2 or gold.ndim != 1 or probs.shape[0] != gold.shape[0]:
        raise ValueError(f"Expected probs N x K and gold N, got {tuple(probs.shape)} and {tuple(gold.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("No examples to score")
    if (gold < 0).any() or (gold >= probs.shape[1]).any():
        raise ValueError("Gold indices must lie in [0, K)")


def expected_calibration_error(probs: torch.Tensor, gold: torch.Tensor, num_bins: int = 10) -> float:
    _check(probs, gold)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == gold).double()
    # Bin b holds confidences in (b/num_bins, (b+1)/num_bins]. A float32 0.6 is 0.60000002: the tolerance keeps
    # values that are on an edge up to float32 rounding in the lower bin, as exact arithmetic would.
    edge_tolerance = 1e-6
    bins = (torch.ceil(confidence.double() * num_bins - edge_tolerance).long() - 1).clamp(0, num_bins - 1)
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence.double())
    correct_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return float((conf_sum - correct_sum).abs().sum() / len(gold))


def brier_score(probs: torch.Tensor, gold: torch.Tensor) -> float:
    _check(probs, gold)
    onehot = torch.nn.functional.one_hot(gold, probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(dim=1).mean())


def calibration_metrics(probs: torch.Tensor, gold: torch.Tensor, ece_bins=DEFAULT_ECE_BINS) -> dict[str, float]:
    """accuracy, nll, brier and one `ece_<bins>` per entry of `ece_bins`."""
    _check(probs, gold)
    probs = probs.double()
    gold_prob = probs.gather(1, gold[:, None]).squeeze(1)
    metrics = {
        "accuracy": float((probs.argmax(dim=1) == gold).double().mean()),
        # A zero probability on the gold class would make NLL infinite; the floor keeps it finite and visible.
        "nll": float(-gold_prob.clamp_min(1e-12).log().mean()),
        "brier": brier_score(probs, gold),
    }
    for num_bins in ece_bins:
        metrics[f"ece_{num_bins}"] = expected_calibration_error(probs, gold, num_bins)
    return metrics


MARKDOWN_HEADER = "accuracy | NLL | ECE-10 | ECE-15 | Brier"


def markdown_cells(metrics: dict) -> str:
    """The cells of `MARKDOWN_HEADER` for one predictive, in the papers' units (x100 for accuracy and ECE)."""
    nan = float("nan")
    return (
        f"{100 * metrics['accuracy']:.1f} | {metrics['nll']:.3f} | {100 * metrics.get('ece_10', nan):.1f} | "
        f"{100 * metrics.get('ece_15', nan):.1f} | {metrics['brier']:.3f}"
    )
