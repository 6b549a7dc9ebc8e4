"""Classification and calibration metrics of a predictive distribution (N x K probabilities, N gold indices),
and the metric registry that every table, plot and summary reads.

`METRICS` holds one `Metric` per reported quantity: its name, how it is aggregated over the examples, whether
higher is better, whether it is shown in percent, whether it is one of the papers' summary columns. ECE is a
family, one column per bin count (`ece_10`, `ece_15`); a protocol preset's headline ECE is
`headline_metric(preset)`. Adding a metric is one `register_metric(Metric(...))`: `calibration_metrics` computes
it, and eval.json, eval.md, train's metrics.json, the model card, the sweep table and the plots show it.

All values are fractions (multiply by 100 for the papers' tables). ECE uses equal-width bins over the
confidence (the max probability), weighted by each bin's share of examples. Where a confidence on a bin edge goes
is the protocol's `ece_edges` (`BIN_EDGES`): "right", bins (lo, hi] (IVON-LoRA's; the default), or "left",
bins [lo, hi) as torchmetrics (and so BLoB) bins, where a confidence of exactly 1 is a bin of its own. Exact ties
(a 2-way tie at 0.5, a 3-way tie at 1/3 under 15 bins, common in bf16) change bins between the two. Brier is the squared
error summed over the K classes (not divided by K), averaged over examples (as IVON-LoRA reports it, Cong et al.,
arXiv 2411.04421).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..registry import Registry
from ..vocabulary import DEFAULT_ECE_BINS

DEFAULT_RISK_LEVELS = (0.01, 0.05, 0.1)
# Where a confidence on a bin edge goes: ece_edges name -> the bins it makes (recorded in every report).
BIN_EDGES = {"right": "(lo, hi]", "left": "[lo, hi), a confidence of 1 in a bin of its own (torchmetrics)"}


def _check(probs: torch.Tensor, gold: torch.Tensor) -> None:
    if probs.ndim != 2 or gold.ndim != 1 or probs.shape[0] != gold.shape[0]:
        raise ValueError(f"Expected probs N x K and gold N, got {tuple(probs.shape)} and {tuple(gold.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("No examples to score")
    if (gold < 0).any() or (gold >= probs.shape[1]).any():
        raise ValueError("Gold indices must lie in [0, K)")


def check_scores(confidence: torch.Tensor, correct: torch.Tensor) -> None:
    """N confidences (one per answer) and N correctness values, N > 0."""
    if confidence.ndim != 1 or correct.shape != confidence.shape or len(confidence) == 0:
        raise ValueError(f"Expected N confidences and N correctness values, got {tuple(confidence.shape)} and "
                         f"{tuple(correct.shape)}")  # fmt: skip


def _num_bin_slots(num_bins: int, edges: str) -> int:
    if edges not in BIN_EDGES:
        raise ValueError(f"Invalid ece_edges value: {edges!r} (must be one of {', '.join(BIN_EDGES)})")
    return num_bins + 1 if edges == "left" else num_bins


def _bin_index(confidence: torch.Tensor, num_bins: int, edges: str = "right") -> torch.Tensor:
    # "right": bin b holds (b/n, (b+1)/n]; "left": [b/n, (b+1)/n), and bin n holds exactly 1 (torchmetrics).
    # A float32 0.6 is 0.60000002: the tolerance puts values that are on an edge up to float32 rounding where exact
    # arithmetic would (torchmetrics compares in the input's dtype, where such a value equals its edge).
    edge_tolerance = 1e-6
    scaled = confidence.double() * num_bins
    if _num_bin_slots(num_bins, edges) > num_bins:
        return torch.floor(scaled + edge_tolerance).long().clamp(0, num_bins)
    return (torch.ceil(scaled - edge_tolerance).long() - 1).clamp(0, num_bins - 1)


def expected_calibration_error(
    probs: torch.Tensor, gold: torch.Tensor, num_bins: int = 10, edges: str = "right"
) -> float:
    _check(probs, gold)
    confidence, prediction = probs.max(dim=1)
    return binary_calibration_error(confidence, prediction == gold, num_bins, edges)


def binary_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, num_bins: int = 10,
                             edges: str = "right") -> float:  # fmt: skip
    """ECE of N confidences in [0, 1] that their answers are right against N correctness values (0/1): the ECE
    of a K-way predictive is this over its max probabilities and argmax hits."""
    confidence, correct = confidence.double(), correct.double()
    bins = _bin_index(confidence, num_bins, edges)
    slots = _num_bin_slots(num_bins, edges)
    conf_sum = torch.zeros(slots, dtype=torch.float64).index_add_(0, bins, confidence)
    correct_sum = torch.zeros(slots, dtype=torch.float64).index_add_(0, bins, correct)
    return float((conf_sum - correct_sum).abs().sum() / len(correct))


def brier_score(probs: torch.Tensor, gold: torch.Tensor) -> float:
    _check(probs, gold)
    onehot = torch.nn.functional.one_hot(gold, probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(dim=1).mean())


def accuracy(probs: torch.Tensor, gold: torch.Tensor) -> float:
    return float((probs.argmax(dim=1) == gold).double().mean())


def negative_log_likelihood(probs: torch.Tensor, gold: torch.Tensor) -> float:
    gold_prob = probs.double().gather(1, gold[:, None]).squeeze(1)
    # A zero probability on the gold class would make NLL infinite; the floor keeps it finite and visible.
    return float(-gold_prob.clamp_min(1e-12).log().mean())


@dataclass(frozen=True)
class Metric:
    """One reported quantity of a predictive distribution.

    `compute(probs N x K float64, gold N)` aggregates it over the examples (for a `per_bins` family,
    `compute(probs, gold, num_bins, edges)`, one column `{name}_{bins}` per bin count); a metric without `compute`
    is read from the predictive's result by `read` (selective prediction's AURC and coverage). `percent`: shown
    x100; `summary`: one of the papers' columns (model cards, sweep tables, plot titles).
    """

    name: str
    higher_is_better: bool
    percent: bool
    compute: Callable[..., float] | None = None
    read: Callable[[dict], float | None] | None = None
    summary: bool = True
    per_bins: bool = False
    description: str = ""

    def columns(self, ece_bins=DEFAULT_ECE_BINS) -> list[str]:
        return [f"{self.name}_{b}" for b in ece_bins] if self.per_bins else [self.name]

    def value(self, metrics: dict, column: str) -> float | None:
        """This metric's `column` in one predictive's result dict; None if it was not computed."""
        return self.read(metrics) if self.read is not None else metrics.get(column)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric) -> Metric:
    """Add `metric` to the registry (its name must be new); every report shows it from then on."""
    return METRICS.register(metric.name, metric)


def metric_of(column: str) -> Metric:
    """The registered metric a result column belongs to (`ece_15` -> the ECE family)."""
    if column in METRICS:
        return METRICS[column]
    family, _, bins = column.rpartition("_")
    if bins.isdigit() and family in METRICS and METRICS[family].per_bins:
        return METRICS[family]
    raise KeyError(f"Unknown metric {column!r}; registered: {', '.join(METRICS)}")


def metric_value(metrics: dict, column: str) -> float | None:
    return metric_of(column).value(metrics, column)


def table_columns(ece_bins=DEFAULT_ECE_BINS, summary_only: bool = False) -> list[str]:
    """Every registered column in registry order, the ECE family expanded over `ece_bins`."""
    return [c for m in METRICS.values() if m.summary or not summary_only for c in m.columns(ece_bins)]


def computed_columns(ece_bins=DEFAULT_ECE_BINS) -> dict[str, bool]:
    """column -> higher_is_better of the metrics `calibration_metrics` computes (a sweep chooses by one)."""
    return {c: m.higher_is_better for m in METRICS.values() if m.compute is not None for c in m.columns(ece_bins)}


def headline_metric(preset) -> str:
    """The ECE column a protocol preset reports as its headline (e.g. ece_15 under `blob`)."""
    return f"ece_{preset.ece_bins}"


def format_metric(column: str, value: float | None) -> str:
    """A table cell: percent metrics x100 with one decimal, the others with three; "-" when not computed."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if metric_of(column).percent else f"{value:.3f}"


def calibration_metrics(probs: torch.Tensor, gold: torch.Tensor, ece_bins=DEFAULT_ECE_BINS,
                        ece_edges: str = "right") -> dict[str, float]:  # fmt: skip
    """Every registered metric with a `compute`: accuracy, nll, brier and one `ece_<bins>` per entry of `ece_bins`
    (bin edges: `ece_edges`, see `BIN_EDGES`)."""
    _check(probs, gold)
    probs = probs.double()
    metrics = {}
    for metric in METRICS.values():
        if metric.compute is None:
            continue
        if metric.per_bins:
            for num_bins in ece_bins:
                metrics[f"{metric.name}_{num_bins}"] = metric.compute(probs, gold, num_bins, ece_edges)
        else:
            metrics[metric.name] = metric.compute(probs, gold)
    return metrics


def reliability_bins(probs: torch.Tensor, gold: torch.Tensor, num_bins: int = 10, edges: str = "right") -> list[dict]:
    """Per ECE bin: its range (lo, hi], or [lo, hi) and [1, 1] with `edges` "left"), example count, mean
    confidence and accuracy (None when empty)."""
    _check(probs, gold)
    confidence, prediction = probs.double().max(dim=1)
    correct = (prediction == gold).double()
    bins = _bin_index(confidence, num_bins, edges)
    rows = []
    for b in range(_num_bin_slots(num_bins, edges)):
        members = bins == b
        count = int(members.sum())
        rows.append({
            "lo": min(b / num_bins, 1.0), "hi": min((b + 1) / num_bins, 1.0), "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })  # fmt: skip
    return rows


def selective_prediction(
    probs: torch.Tensor, gold: torch.Tensor, risk_levels=DEFAULT_RISK_LEVELS, max_curve_points: int = 200
) -> dict:
    """Accuracy-coverage trade-off of abstaining below the max probability (selective classification): the
    `risk_coverage` of the max probabilities and argmax hits."""
    _check(probs, gold)
    confidence, prediction = probs.double().max(dim=1)
    return risk_coverage(confidence, prediction == gold, risk_levels, max_curve_points)


def risk_coverage(
    confidence: torch.Tensor, correct: torch.Tensor, risk_levels=DEFAULT_RISK_LEVELS, max_curve_points: int = 200
) -> dict:
    """Accuracy-coverage trade-off of abstaining below a confidence threshold (N confidences, N 0/1 hits).

    Examples are accepted from the most confident down; a threshold cannot separate equal confidences, so
    ties enter together. Returns the curve (coverage, accuracy at every distinct threshold), the area under the
    risk-coverage curve (AURC, lower is better) and, per risk level r, the largest coverage whose selective
    risk (1 - accuracy) is at most r (0 when even the most confident group is riskier). The curve is thinned
    to at most `max_curve_points` evenly spaced thresholds (always keeping full coverage) for the report.
    """
    check_scores(confidence, correct)
    confidence, correct = confidence.double(), correct.double()
    order = torch.sort(confidence, descending=True, stable=True).indices
    confidence, correct = confidence[order], correct[order]
    n = len(correct)
    cumulative_correct = correct.cumsum(0)
    # The last position of each group of equal confidence is where a threshold can stop.
    ends = torch.nonzero(torch.cat([confidence[1:] != confidence[:-1], torch.tensor([True])])).squeeze(1)
    accepted = ends + 1
    accuracy = cumulative_correct[ends] / accepted
    coverage = accepted.double() / n
    # AURC as the mean selective risk over the n acceptance counts (ties share their group's risk).
    counts = torch.diff(torch.cat([torch.tensor([0]), accepted]))
    aurc = float(((1 - accuracy) * counts).sum() / n)
    at_risk = {}
    for level in risk_levels:
        feasible = coverage[(1 - accuracy) <= level + 1e-12]
        at_risk[f"{level:g}"] = float(feasible.max()) if len(feasible) else 0.0
    keep = torch.unique(torch.linspace(0, len(coverage) - 1, min(len(coverage), max_curve_points)).round().long())
    return {
        "aurc": aurc,
        "coverage_at_risk": at_risk,
        "curve": {"coverage": coverage[keep].tolist(), "accuracy": accuracy[keep].tolist()},
    }


def _selective(metrics: dict) -> dict:
    return metrics.get("selective", {})


for _metric in (
    Metric("accuracy", higher_is_better=True, percent=True, compute=accuracy, description="argmax = gold"),
    Metric(
        "nll", higher_is_better=False, percent=False, compute=negative_log_likelihood, description="mean -log p(gold)"
    ),  # fmt: skip
    Metric(
        "ece",
        higher_is_better=False,
        percent=True,
        compute=expected_calibration_error,
        per_bins=True,
        description="equal-width bins on the max probability (edges: the protocol's ece_edges)",
    ),  # fmt: skip
    Metric("brier", higher_is_better=False, percent=False, compute=brier_score, description="sum over classes"),
    Metric(
        "aurc",
        higher_is_better=False,
        percent=True,
        read=lambda m: _selective(m).get("aurc"),
        summary=False,
        description="area under the risk-coverage curve",
    ),  # fmt: skip
    Metric(
        "coverage@5%",
        higher_is_better=True,
        percent=True,
        summary=False,
        read=lambda m: _selective(m).get("coverage_at_risk", {}).get("0.05"),
        description="largest coverage with selective risk <= 5%",
    ),  # fmt: skip
):
    register_metric(_metric)
