"""The calibration baselines a reviewer asks for, computed from predictions: temperature scaling and ensembles.

* Temperature scaling (Guo et al., ICML 2017): one scalar T > 0 fitted by the NLL of softmax(log p / T) on a
  held-out split, then applied to the reported split, on a run's predictions at its weights (the posterior mean
  for IVON). It changes confidence, never the predicted answer. The NLL is convex in 1/T, so a golden-section
  search over 1/T finds the minimum to any tolerance without gradients.
* Deep ensemble (Lakshminarayanan et al., NeurIPS 2017): the mean of M independently trained runs' probability
  vectors. It is represented as `Predictions` whose "samples" are the members (`sample_kind="ensemble"`), so the
  report shows member 1 alone and the ensemble of 1..M members, like posterior samples.
"""

from __future__ import annotations

import math

import torch

from .predict import Predictions

# Search range of T: from 20x sharper to 20x flatter than the model's own probabilities.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T), row-wise; zero-probability (absent) choices stay 0."""
    logits = probs.double().log() / temperature
    return torch.softmax(logits, dim=-1)


def _nll(probs: torch.Tensor, gold: torch.Tensor, inverse_temperature: float) -> float:
    log_probs = torch.log_softmax(probs.double().log() * inverse_temperature, dim=-1)
    return float(-log_probs.gather(1, gold.view(-1, 1)).mean())


def fit_temperature(
    probs: torch.Tensor, gold: torch.Tensor, bounds=TEMPERATURE_BOUNDS, tolerance: float = 1e-6
) -> float:
    """The T in `bounds` that minimises the NLL of `temper(probs, T)` against `gold` (N x K probs, N indices)."""
    if probs.ndim != 2 or probs.shape[0] != gold.shape[0] or probs.shape[0] == 0:
        raise ValueError(
            f"Expected probs N x K and gold N with N > 0, got {tuple(probs.shape)} and {tuple(gold.shape)}"
        )
    # Golden-section search on beta = 1/T, where the NLL is convex.
    low, high = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    nll_a, nll_b = _nll(probs, gold, a), _nll(probs, gold, b)
    while high - low > tolerance:
        if nll_a < nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - ratio * (high - low)
            nll_a = _nll(probs, gold, a)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + ratio * (high - low)
            nll_b = _nll(probs, gold, b)
    return 1.0 / ((low + high) / 2.0)


def scaled_probs(predictions: Predictions) -> torch.Tensor:
    """What temperature scaling scales: a run's probabilities at its weights (the posterior mean for IVON), an
    ensemble's averaged predictive (the ensemble is scaled as a whole)."""
    return predictions.predictive() if predictions.sample_kind == "ensemble" else predictions.mean


def temperature_scaled(predictions: Predictions, temperature: float) -> Predictions:
    """`scaled_probs(predictions)` tempered by T, as predictions at the weights (no samples)."""
    return Predictions(predictions.ids, predictions.gold, predictions.num_choices,
                       temper(scaled_probs(predictions), temperature))  # fmt: skip


def ensemble(members: list[Predictions]) -> Predictions:
    """The deep ensemble of `members` (each scored at its weights on the same examples): "mean" is member 1
    alone, "samples" are the M members, so the sampled predictive is the ensemble's mean probability vector."""
    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for member in members[1:]:
        if member.ids != first.ids or not torch.equal(member.gold, first.gold):
            raise ValueError("Ensemble members must be scored on the same examples in the same order")
    num_choices = max(m.mean.shape[1] for m in members)
    means = [torch.nn.functional.pad(m.mean, (0, num_choices - m.mean.shape[1])) for m in members]
    return Predictions(first.ids, first.gold, first.num_choices, means[0], torch.stack(means), "ensemble")
