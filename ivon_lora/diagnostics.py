"""Is the posterior doing anything? Diagnostics of a posterior artifact and of its predictive.

From the artifact alone (no model): per LoRA matrix, the distribution of the posterior std, of std / |mean| and of
the signal-to-noise ratio |mean| / std, and the share of Hessian entries still within `HESS_INIT_TOLERANCE` of
`hess_init` (the Hessian is recovered from the variance: h = 1 / (ess * variance) - weight_decay). From per-example
predictions at the mean and under S samples (the `predictions.jsonl` that `train` and `eval` write, read by
`ivon_lora.evaluation.predict.read_predictions` beside its writer): how often a sample changes the predicted answer,
and the mean KL divergence from the mean's predictive to a sample's.

With a curvature measured at the mean (`curvature_diagnostics`, `ivon-lora inspect --curvature`): how the precision
ranks the entries against it (Spearman per matrix) and their dynamic ranges.

Three failure modes get a plain warning with the fix:
* inert: samples predict like the mean, so averaging them cannot change calibration (ess too large);
* prior-dominated: the Hessian never left `hess_init`, so the width is 1 / (ess * hess_init), chosen by hand rather
  than learned (beta2 too close to 1 for the run length); `ivon-lora refine` re-estimates it;
* not learned: the precision ranks the entries unlike the measured curvature.
"""

from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

import torch

HESS_INIT_TOLERANCE = 0.05  # "still at its initial value": within 5% of hess_init
INERT_FLIP_RATE = 0.01  # samples change fewer than 1% of the answers...
INERT_KL = 1e-3  # ...and move the predictive by less than this (nats)
PRIOR_DOMINATED_SHARE = 0.9  # 90% of the Hessian entries still at hess_init
# The fix the prior-dominated and not-learned warnings name: the exact GGN at the mean, its scale (ess, δ) chosen on
# validation (at the run's own scale the curvature can stay below the prior almost everywhere).
REFINE_HINT = (
    "Re-estimate the precision at the mean from the train split, its scale chosen on validation: "
    "`ivon-lora refine RUN --ess E1 E2 E3 --prior-precision D1 D2 D3 --out DIR`"
)
UNLEARNED_SPEARMAN = 0.3  # the precision ranks entries unlike the measured curvature
WIDE_FLIP_RATE = 0.3  # samples change more than 30% of the answers
QUANTILES = (0.05, 0.5, 0.95)


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    values = values.double().flatten()
    if values.numel() > 1_000_000:  # torch.quantile's input limit; a strided subsample keeps the shape
        values = values[:: values.numel() // 1_000_000 + 1]
    q = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"q{int(100 * p):02d}": float(v) for p, v in zip(QUANTILES, q)}


def posterior_diagnostics(posterior) -> dict:
    """Per adapter tensor and overall: std, std/|mean| and SNR quantiles, and the share of Hessian entries at init."""
    config = posterior.config
    hyper = config.get("hyperparameters", {})
    ess, weight_decay, hess_init = config.get("ess"), config.get("weight_decay", 0.0), hyper.get("hess_init")
    matrices, all_std, all_snr, at_init, total = {}, [], [], 0, 0
    for key, mean in posterior.mean.items():
        variance = posterior.variance[key].double()
        std = variance.sqrt()
        kept = variance > 0  # pruned entries (variance 0) carry no noise
        snr = mean.double().abs()[kept] / std[kept]
        entry = {"numel": mean.numel(), "std": _quantiles(std[kept]) if kept.any() else None,
                 "snr": _quantiles(snr) if kept.any() else None,
                 "mean_abs": float(mean.abs().double().mean())}  # fmt: skip
        if kept.any():
            entry["std_over_abs_mean"] = _quantiles(std[kept] / mean.double().abs()[kept].clamp_min(1e-30))
        if ess and hess_init and kept.any():
            hess = 1.0 / (ess * variance[kept]) - weight_decay
            near = ((hess - hess_init).abs() <= HESS_INIT_TOLERANCE * hess_init).sum().item()
            entry["hess_at_init_share"] = near / kept.sum().item()
            entry["hess"] = _quantiles(hess)
            at_init, total = at_init + near, total + kept.sum().item()
        matrices[key] = entry
        all_std.append(std[kept].flatten())
        all_snr.append(snr.flatten())
    std, snr = torch.cat(all_std), torch.cat(all_snr)
    return {
        "ess": ess,
        "weight_decay": weight_decay,
        "hess_init": hess_init,
        "step": config.get("step"),
        "beta2": hyper.get("beta2"),
        "num_entries": sum(m.numel() for m in posterior.mean.values()),
        "std": _quantiles(std) if std.numel() else None,
        "snr": _quantiles(snr) if snr.numel() else None,
        "hess_at_init_share": at_init / total if total else None,
        "refine": config.get("refine"),
        "matrices": matrices,
    }


def predictive_diagnostics(mean: torch.Tensor, samples: torch.Tensor) -> dict:
    """How much S samples (S x N x K probabilities) move the predictions away from the mean's (N x K)."""
    if samples.ndim != 3 or samples.shape[1:] != mean.shape:
        raise ValueError(
            f"Expected samples S x N x K and mean N x K, got {tuple(samples.shape)} and {tuple(mean.shape)}"
        )
    mean, samples = mean.double(), samples.double()
    flips = samples.argmax(-1) != mean.argmax(-1)  # S x N
    # KL(mean || sample) per example and sample; 0 * log(0 / q) = 0 for absent choices.
    log_ratio = torch.where(mean > 0, mean.log() - samples.clamp_min(1e-300).log(), torch.zeros_like(mean))
    kl = (mean * log_ratio).sum(-1)
    averaged = samples.mean(0)
    return {
        "samples": samples.shape[0],
        "num_examples": mean.shape[0],
        "flip_rate": float(flips.double().mean()),
        "examples_flipped_by_any_sample": float(flips.any(0).double().mean()),
        "mean_kl": float(kl.mean()),
        "predictive_changed": float((averaged.argmax(-1) != mean.argmax(-1)).double().mean()),
    }


def warnings_for(diagnostics: dict) -> list[str]:
    """Plain-language warnings, each with its fix."""
    posterior, predictive = diagnostics.get("posterior", {}), diagnostics.get("predictive")
    messages = []
    share = posterior.get("hess_at_init_share")
    if share is not None and share >= PRIOR_DOMINATED_SHARE:
        beta2, steps = posterior.get("beta2"), posterior.get("step")
        horizon = f"{1 / (1 - beta2):.0f} steps" if beta2 and beta2 < 1 else "never"
        messages.append(
            f"prior-dominated: {100 * share:.0f}% of the Hessian entries are still within {100 * HESS_INIT_TOLERANCE:.0f}% of "
            f"hess_init after {steps} steps (beta2={beta2}: the estimate averages over {horizon}), so the posterior width "
            f"is 1/(ess*hess_init), set by hand, not learned. {REFINE_HINT}, or lower ivon_beta2 so that 1/(1-beta2) "
            "is well below the run length (e.g. 0.999 for ~1k steps), or train longer."
        )
    curvature = diagnostics.get("curvature")
    rho = curvature["h"]["spearman_median"] if curvature is not None else None
    if rho is not None and not math.isnan(rho) and rho < UNLEARNED_SPEARMAN:
        messages.append(
            f"not learned: the precision's ranking of the entries agrees with the curvature ({curvature['reference']}) "
            f"at a median Spearman rho of {rho:.2f} per matrix, so its per-entry widths carry little of the data. "
            f"{REFINE_HINT}."
        )
    if predictive is not None:
        if predictive["flip_rate"] < INERT_FLIP_RATE and predictive["mean_kl"] < INERT_KL:
            messages.append(
                f"inert: posterior samples change {100 * predictive['flip_rate']:.2f}% of the answers (mean KL "
                f"{predictive['mean_kl']:.1e}), so averaging samples cannot change calibration. The posterior std is "
                f"1/sqrt(ess*(hess+weight_decay)) (median {posterior.get('std', {}).get('q50', float('nan')):.2g}): lower "
                "ivon_ess (e.g. 10x), or evaluate with a test-time temperature below 1 (eval --temperatures)."
            )
        elif predictive["flip_rate"] > WIDE_FLIP_RATE:
            messages.append(
                f"very wide: posterior samples change {100 * predictive['flip_rate']:.0f}% of the answers; if the sampled "
                "predictive is less accurate than the mean, raise ivon_ess (or evaluate with a temperature above 1)."
            )
    return messages


def plot_diagnostics(diagnostics: dict, path: str, title: str = "") -> None:
    """Three panels over the adapter tensors in model order: posterior std and SNR (median and 5-95% range, log scale),
    and the share of Hessian entries still at hess_init; the predictive's statistics in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    matrices = diagnostics["posterior"]["matrices"]
    keys = [k for k, m in matrices.items() if m["std"] is not None]
    x = list(range(len(keys)))
    colors = ["#4c72b0" if "lora_A" in k else "#dd8452" for k in keys]
    figure = Figure(figsize=(13, 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for axis, stat, label in ((axes[0], "std", "posterior std"), (axes[1], "snr", "signal-to-noise |mean| / std")):
        axis.vlines(x, [matrices[k][stat]["q05"] for k in keys], [matrices[k][stat]["q95"] for k in keys],
                    colors=colors, linewidth=0.8)  # fmt: skip
        axis.scatter(x, [matrices[k][stat]["q50"] for k in keys], c=colors, s=6)
        axis.set_yscale("log")
        axis.set_xlabel("adapter tensor (model order)")
        axis.set_ylabel(f"{label}: median, 5-95% range")
        axis.set_title(label, fontsize=9)
    share = [matrices[k].get("hess_at_init_share", math.nan) for k in keys]
    axes[2].scatter(x, [100 * s for s in share], c=colors, s=6)
    axes[2].set_ylim(-5, 105)
    axes[2].set_xlabel("adapter tensor (model order)")
    axes[2].set_ylabel(f"% of entries within {100 * HESS_INIT_TOLERANCE:.0f}% of hess_init")
    axes[2].set_title("Hessian still at its initial value (100%: width not learned)", fontsize=9)
    axes[0].legend(handles=[Line2D([], [], color="#4c72b0", marker="o", linestyle="", label="lora_A"),
                            Line2D([], [], color="#dd8452", marker="o", linestyle="", label="lora_B")],
                   fontsize=8, loc="best")  # fmt: skip
    predictive = diagnostics.get("predictive")
    heading = title or "posterior diagnostics"
    if predictive is not None:
        heading += (
            f": each posterior sample changes {100 * predictive['flip_rate']:.1f}% of the answers, "
            f"mean KL(mean || sample) {predictive['mean_kl']:.1e} nats ({predictive['num_examples']} examples)"
        )
    figure.suptitle(heading, fontsize=10)
    figure.savefig(path)


def curvature_diagnostics(posterior, curvature: dict[str, torch.Tensor], reference: str) -> dict:
    """How the posterior's precision agrees with an independently measured `curvature` (per matrix Spearman and
    dynamic range), as trained and, for an IVON run, debiased; `reference` says what the curvature is."""
    from .curvature import agreement, data_hessian, debiased_hessian

    def summary(estimate):
        result = agreement(estimate, curvature)
        return {**{k: v for k, v in result.items() if k != "matrices"},
                "matrices": {key: m["spearman"] for key, m in result["matrices"].items()}}  # fmt: skip

    result = {"reference": reference, "h": summary(data_hessian(posterior))}
    if "refine" not in posterior.config and posterior.config.get("step"):
        try:
            result["debiased_h"] = summary(debiased_hessian(posterior))
        except ValueError:  # no beta2 / hess_init recorded
            pass
    return result


def diagnose(posterior, mean: torch.Tensor | None = None, samples: torch.Tensor | None = None,
             curvature: dict | None = None) -> dict:  # fmt: skip
    """Posterior diagnostics, the predictive's when sample predictions are given, the agreement with the curvature
    when `curvature_diagnostics` measured it, and the warnings."""
    result = {"posterior": posterior_diagnostics(posterior)}
    if mean is not None and samples is not None:
        result["predictive"] = predictive_diagnostics(mean, samples)
    if curvature is not None:
        result["curvature"] = curvature
    result["warnings"] = warnings_for(result)
    return result


class SummaryLine(NamedTuple):
    """One line of the summary and its `logging` level (WARNING for each warning, INFO otherwise)."""

    level: int
    text: str

    def __str__(self) -> str:  # as the terminal shows it
        return f"WARNING {self.text}" if self.level >= logging.WARNING else self.text


def summary_lines(diagnostics: dict) -> list[SummaryLine]:
    """A few lines for logs and the terminal, each with its level."""
    posterior = diagnostics["posterior"]
    std, snr, share = posterior["std"], posterior["snr"], posterior["hess_at_init_share"]
    lines = [
        f"posterior over {posterior['num_entries']} adapter entries after {posterior['step']} steps "
        f"(ess {posterior['ess']:g}, hess_init {posterior['hess_init']}, weight_decay {posterior['weight_decay']})",
        f"std median {std['q50']:.3g} (5-95%: {std['q05']:.3g}-{std['q95']:.3g}); "
        f"SNR |mean|/std median {snr['q50']:.3g} (5-95%: {snr['q05']:.3g}-{snr['q95']:.3g})",
    ]
    if share is not None:
        lines.append(f"Hessian entries still within {100 * HESS_INIT_TOLERANCE:.0f}% of hess_init: {100 * share:.1f}%")
    refine = posterior.get("refine")
    if refine:
        lines.append(f"precision re-estimated at the mean by `ivon-lora refine` ({refine['method']}, "
                     f"{refine['examples']} {refine['split']} examples, ess {refine['ess']:g}, prior precision "
                     f"{refine['prior_precision']:g})")  # fmt: skip
    curvature = diagnostics.get("curvature")
    if curvature is not None:
        for name, what in (("h", "the precision"), ("debiased_h", "its debiased data part")):
            if name in curvature:
                a = curvature[name]
                lines.append(f"{what} against the curvature ({curvature['reference']}): median Spearman rho per "
                             f"matrix {a['spearman_median']:.2f} ({a['spearman_min']:.2f} to {a['spearman_max']:.2f}); "
                             f"dynamic range (max/median) {a['dynamic_range_median']:.3g} against "
                             f"{a['reference_dynamic_range_median']:.3g}")  # fmt: skip
    predictive = diagnostics.get("predictive")
    if predictive is not None:
        lines.append(
            f"over {predictive['num_examples']} examples, each of {predictive['samples']} samples changes "
            f"{100 * predictive['flip_rate']:.1f}% of the answers ({100 * predictive['examples_flipped_by_any_sample']:.1f}% "
            f"by at least one sample); mean KL(mean || sample) {predictive['mean_kl']:.2e} nats"
        )
    return [SummaryLine(logging.INFO, line) for line in lines] + [
        SummaryLine(logging.WARNING, message) for message in diagnostics["warnings"]
    ]


def log_summary(diagnostics: dict, logger: logging.Logger) -> None:
    """The summary lines into `logger`, each at its level."""
    for line in summary_lines(diagnostics):
        logger.log(line.level, "%s", line.text)


def write_diagnostics(directory: str, diagnostics: dict, title: str) -> None:
    """diagnostics.json and diagnostics.png into `directory`."""
    from .fileio import write_json_atomic
    from .filenames import DIAGNOSTICS_NAME, DIAGNOSTICS_PLOT_NAME

    write_json_atomic(os.path.join(directory, DIAGNOSTICS_NAME), diagnostics)
    plot_diagnostics(diagnostics, os.path.join(directory, DIAGNOSTICS_PLOT_NAME), title)
