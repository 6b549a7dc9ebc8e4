"""A risk-averse selector for selective prediction from S posterior samples: a lower confidence bound.

Variational VQA (Wieczorek, Daun, Khan, Rohrbach; arXiv 2505.09591) proposes a risk-averse selector that uses
the variance of the predictions across posterior samples, not only their average, and reports gains at low risk
(<= 1%). Its method section could not be read here (only the abstract was reachable), so this is the lower
confidence bound the issue names in its place, NOT the paper's exact definition:

    chosen answer  y_i = argmax_k (1/S) sum_s p_s(k | x_i)         (the sampled predictive's answer)
    confidence     g_i = mean_s c_si - kappa * std_s c_si,   c_si = p_s(y_i | x_i)

with the population standard deviation (divisor S, so S=1 gives std 0). kappa = 0 is the sampled predictive's
max probability, the usual selective-prediction score. Examples are accepted from the highest g down
(`metrics.risk_coverage`). kappa is chosen on a held-out split by the AURC of g there (ties: the smallest kappa)
from `KAPPA_GRID`, never on the reported split; the choice and the grid's selection-split AURCs are recorded.
"""

from __future__ import annotations

import torch

from .metrics import DEFAULT_RISK_LEVELS, risk_coverage

KAPPA_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
CRITERION = "aurc"


def risk_averse_confidence(samples: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(g N, chosen answer N) of S x N x K sample probabilities: see the module doc."""
    if samples is None or samples.ndim != 3 or len(samples) == 0:
        raise ValueError("The risk-averse selector needs per-sample probabilities S x N x K (posterior samples)")
    if kappa < 0:
        raise ValueError(f"Invalid kappa value: {kappa} (must be >= 0)")
    samples = samples.double()
    _, chosen = samples.mean(0).max(dim=1)
    per_sample = samples.gather(2, chosen.view(1, -1, 1).expand(len(samples), -1, 1)).squeeze(2)  # S x N
    return per_sample.mean(0) - kappa * per_sample.std(0, correction=0), chosen


def risk_averse_selective(samples: torch.Tensor, gold: torch.Tensor, kappa: float,
                          risk_levels=DEFAULT_RISK_LEVELS) -> dict:  # fmt: skip
    """`metrics.risk_coverage` (AURC, coverage at each risk, curve) of the selector with this `kappa`."""
    confidence, chosen = risk_averse_confidence(samples, kappa)
    return risk_coverage(confidence, chosen == gold, risk_levels)


def choose_kappa(samples: torch.Tensor, gold: torch.Tensor, grid=KAPPA_GRID) -> tuple[float, list[dict]]:
    """The kappa of `grid` with the lowest AURC on these (held-out) predictions, the smallest among equals, and
    every kappa's AURC there."""
    if not grid:
        raise ValueError("The kappa grid is empty")
    scored = [{"kappa": float(kappa), CRITERION: risk_averse_selective(samples, gold, kappa)["aurc"]}
              for kappa in sorted(grid)]  # fmt: skip
    best = min(scored, key=lambda row: (row[CRITERION], row["kappa"]))
    return best["kappa"], scored


def risk_averse_report(selection, reported, select_split: str, grid=KAPPA_GRID,
                       risk_levels=DEFAULT_RISK_LEVELS) -> dict:  # fmt: skip
    """The selector on `reported` (evaluation.predict.Predictions with samples) with kappa chosen on `selection`
    (the same run's predictions on `select_split`), for eval.json."""
    for what, predictions in (("selection", selection), ("reported", reported)):
        if predictions.samples is None:
            raise ValueError(f"The risk-averse selector needs posterior samples of the {what} split")
    kappa, scored = choose_kappa(selection.samples, selection.gold, grid)
    return {
        "kappa": kappa,
        "chosen_on": select_split,
        "criterion": f"lowest {CRITERION} of the selector on {select_split!r}, smallest kappa among equals",
        "samples": len(reported.samples),
        "grid": scored,
        "selective": risk_averse_selective(reported.samples, reported.gold, kappa, risk_levels),
        "definition": "mean_s p_s(y) - kappa * std_s p_s(y) (population std) of the sampled predictive's answer y; "
        "the lower confidence bound named in place of arXiv 2505.09591's selector, which was not read",
    }


def risk_averse_lines(tasks: dict) -> list[str]:
    """eval.md lines: per task and run with a risk-averse report, its AURC and coverage@1% beside the sampled
    predictive's max probability (kappa = 0)."""
    lines = []
    for task, entry in tasks.items():
        for label, metrics in entry.get("runs", {}).items():
            report = metrics.get("risk_averse")
            if report is None:
                continue
            ours, plain = report["selective"], metrics["sampled"]["selective"]
            lines.append(
                f"- {task}, {label}: risk-averse selector (kappa={report['kappa']:g}, chosen on "
                f"{report['chosen_on']!r} by AURC): AURC {100 * ours['aurc']:.2f}, coverage@1% "
                f"{100 * ours['coverage_at_risk'].get('0.01', float('nan')):.1f}; max probability of the sampled "
                f"predictive: AURC {100 * plain['aurc']:.2f}, coverage@1% "
                f"{100 * plain['coverage_at_risk'].get('0.01', float('nan')):.1f}"
            )
    return (["", "Selective prediction with the risk-averse selector (lower confidence bound over the samples):",
             *lines]) if lines else []  # fmt: skip
