"""Selective generation: how well a confidence score ranks a generator's correct answers above its wrong ones.

Inputs: N confidences (higher = more confident; `uncertainty.CONFIDENCE_SCORES`) and N correctness values (0/1,
the task's judge on each chosen answer). `SELECTIVE_METRICS` is the registry of what is reported per score. It
sits beside `metrics.METRICS` because that registry's `compute(probs N x K, gold N)` is specific to a K-way
predictive distribution; entries are the same `Metric` records, computed from (confidence, correct) instead.

- accuracy: the share of correct answers (the same for every score).
- auroc: P(a correct answer's confidence > a wrong one's), ties counted half (the Mann-Whitney U over
  n_correct x n_wrong). Undefined (NaN, with the reason under "undefined") when every answer is correct or
  every answer is wrong.
- prr: the prediction rejection ratio as LM-Polygraph defines it (`ue_metrics/pred_rej_area.py` and
  `normalize_metric`): with the quality = correctness, the area under the prediction-rejection curve, A =
  (1/N) sum_{k=1..N} (mean quality of the k most confident answers), normalised as (A_score - A_random) /
  (A_oracle - A_random). The oracle ranks by the quality itself; the random baseline is its expectation, the
  mean quality (LM-Polygraph estimates it by averaging 1000 random orders). Ties: LM-Polygraph's argsort orders
  tied answers by position; here A is its expectation over the orders of tied answers (exact, deterministic),
  so a constant score has PRR 0 and a score separating correct from wrong perfectly has PRR 1. Undefined when
  every answer is correct or every answer is wrong (oracle = random; LM-Polygraph then returns A unnormalised).
  1 is perfect, 0 random, negative worse than random.
- aurc and coverage@r (r = 1%, 5%, 10%): `metrics.risk_coverage`, where a threshold cannot split equal
  confidences, so a tied group is accepted together (every acceptance count inside it carries the group's risk);
  coverage@r is the largest coverage whose selective risk is at most r.
- ece_<bins>: `metrics.binary_calibration_error` of the score as a probability, only for scores that are one
  (`ConfidenceScore.probability`).
"""

from __future__ import annotations

import math

import torch

from ..registry import Registry
from .metrics import (
    DEFAULT_ECE_BINS,
    DEFAULT_RISK_LEVELS,
    Metric,
    binary_calibration_error,
    check_scores,
    risk_coverage,
)


def _check(confidence, correct) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, correct = torch.as_tensor(confidence).double(), torch.as_tensor(correct)
    check_scores(confidence, correct)
    if torch.isnan(confidence).any():
        first = int(torch.nonzero(torch.isnan(confidence))[0])
        raise ValueError(f"Confidence of answer {first} is NaN: it cannot be ranked")
    if not ((correct == 0) | (correct == 1)).all():
        raise ValueError("Correctness values must be 0 or 1")
    return confidence, correct.double()


def undefined_reason(correct) -> str | None:
    """Why AUROC and PRR are undefined on these answers (every answer right or every one wrong), else None."""
    correct = torch.as_tensor(correct)
    if bool((correct == 1).all()):
        return "every answer is correct: there is no wrong answer to rank below a correct one"
    if bool((correct == 0).all()):
        return "every answer is wrong: there is no correct answer to rank above a wrong one"
    return None


def auroc(confidence, correct) -> float:
    """P(confidence of a correct answer > that of a wrong one) + P(equal) / 2; NaN if one class is absent."""
    confidence, correct = _check(confidence, correct)
    if undefined_reason(correct) is not None:
        return math.nan
    # Mid-ranks (ties get the mean of the ranks they span), then the Mann-Whitney U of the correct answers.
    values, inverse, counts = torch.unique(confidence, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid_ranks = (ends - (counts.double() - 1) / 2)[inverse]
    num_correct = correct.sum()
    num_wrong = len(correct) - num_correct
    u_statistic = (mid_ranks * correct).sum() - num_correct * (num_correct + 1) / 2
    return float(u_statistic / (num_correct * num_wrong))


def rejection_area(confidence, quality) -> float:
    """(1/N) sum_k of the mean quality of the k most confident answers, expected over the orders of ties."""
    confidence, quality = torch.as_tensor(confidence).double(), torch.as_tensor(quality).double()
    order = torch.sort(confidence, descending=True, stable=True).indices
    confidence, quality = confidence[order], quality[order]
    n = len(quality)
    # Each tie group: the answers accepted before it and their total quality, and its mean quality. Accepting j
    # of its m answers in a random order adds j times its mean quality in expectation.
    starts = torch.cat([torch.tensor([True]), confidence[1:] != confidence[:-1]])
    group = starts.long().cumsum(0) - 1
    group_start = torch.nonzero(starts).squeeze(1)
    group_size = torch.bincount(group).double()
    group_mean = torch.zeros(len(group_size), dtype=torch.float64).index_add_(0, group, quality) / group_size
    quality_before = torch.cat([torch.zeros(1, dtype=torch.float64), quality.cumsum(0)])[group_start]
    accepted = torch.arange(1, n + 1, dtype=torch.float64)
    within = accepted - group_start[group].double()
    expected_mean = (quality_before[group] + within * group_mean[group]) / accepted
    return float(expected_mean.mean())


def prediction_rejection_ratio(confidence, correct) -> float:
    """(A_score - A_random) / (A_oracle - A_random) of `rejection_area` on the correctness (see the module doc)."""
    confidence, correct = _check(confidence, correct)
    if undefined_reason(correct) is not None:
        return math.nan
    random = float(correct.mean())
    oracle = rejection_area(correct, correct)
    return (rejection_area(confidence, correct) - random) / (oracle - random)


def _coverage_at(level: float):
    return lambda confidence, correct: risk_coverage(confidence, correct, (level,))["coverage_at_risk"][f"{level:g}"]


def coverage_name(level: float) -> str:
    return f"coverage@{100 * level:g}%"


SELECTIVE_METRICS: Registry[Metric] = Registry("selective metric", (
    (metric.name, metric)
    for metric in (
        Metric("accuracy", higher_is_better=True, percent=True,
               compute=lambda confidence, correct: float(correct.mean()),
               description="the chosen answer is correct (the task's judge)"),
        Metric("auroc", higher_is_better=True, percent=True, compute=auroc,
               description="P(a correct answer is more confident than a wrong one), ties half"),
        Metric("prr", higher_is_better=True, percent=True, compute=prediction_rejection_ratio,
               description="prediction rejection ratio (LM-Polygraph): 1 oracle, 0 random"),
        Metric("aurc", higher_is_better=False, percent=True,
               compute=lambda confidence, correct: risk_coverage(confidence, correct)["aurc"],
               description="area under the risk-coverage curve"),
        *(Metric(coverage_name(level), higher_is_better=True, percent=True, compute=_coverage_at(level),
                 description=f"largest coverage with selective risk <= {100 * level:g}%")
          for level in DEFAULT_RISK_LEVELS),
        Metric("ece", higher_is_better=False, percent=True, compute=binary_calibration_error, per_bins=True,
               description="equal-width bins on the score as a probability (probability scores only)"),
    )
))  # fmt: skip


def selective_generation_metrics(confidence, correct, probability=None, ece_bins=DEFAULT_ECE_BINS,
                                 ece_edges: str = "right") -> dict:  # fmt: skip
    """Every `SELECTIVE_METRICS` column of one confidence score, the accuracy-coverage curve, and why a metric is
    undefined ("undefined": {column: reason}; its value is NaN). `probability`: the score as a probability of
    being right (`ConfidenceScore.probability`), whose ECE is reported; None: no ECE columns."""
    confidence, correct = _check(confidence, correct)
    result = {}
    for metric in SELECTIVE_METRICS.values():
        if not metric.per_bins:
            result[metric.name] = metric.compute(confidence, correct)
        elif probability is not None:
            probability = torch.as_tensor(probability).double()
            if probability.shape != confidence.shape or ((probability < 0) | (probability > 1)).any():
                raise ValueError("Expected one probability in [0, 1] per answer for the ECE")
            for num_bins in ece_bins:
                result[f"{metric.name}_{num_bins}"] = metric.compute(probability, correct, num_bins, ece_edges)
    reason = undefined_reason(correct)
    result["undefined"] = {"auroc": reason, "prr": reason} if reason else {}
    result["curve"] = risk_coverage(confidence, correct)["curve"]
    return result
