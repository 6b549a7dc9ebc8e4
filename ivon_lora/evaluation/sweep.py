"""Test-time posterior sweeps: pruning fractions x temperatures, chosen on one split and reported on another."""

from __future__ import annotations

import itertools
import logging

from .predict import evaluate_predictive

logger = logging.getLogger(__name__)

DEFAULT_PRUNE_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
# Criterion -> whether larger is better.
SELECTION_CRITERIA = {"accuracy": True, "nll": False, "brier": False, "ece_10": False, "ece_15": False}


def predictive_metrics(result: dict) -> dict:
    """The metrics a configuration is judged by: the sampled predictive if there is one, else the mean."""
    return result.get("sampled", result["mean"])


def sweep_posterior(
    model,
    tokenizer,
    posterior,
    select_examples,
    report_examples,
    fractions=DEFAULT_PRUNE_FRACTIONS,
    temperatures=(1.0,),
    prune_options: dict | None = None,
    select_by: str = "nll",
    **evaluate_options,
) -> dict:
    """Evaluate every (fraction, temperature) on both splits; choose on the selection split only.

    Returns {"configs": [{fraction, temperature, select: metrics, report: metrics}], "chosen": index,
    "select_by": criterion}. The model's adapter holds the unchanged posterior mean afterwards.
    """
    if select_by not in SELECTION_CRITERIA:
        raise ValueError(f"Invalid select_by value: {select_by!r} (choose from {', '.join(SELECTION_CRITERIA)})")
    prune_options = prune_options or {}
    configs = []
    try:
        for fraction, temperature in itertools.product(fractions, temperatures):
            candidate = posterior.prune(fraction, **prune_options) if fraction > 0 else posterior
            if temperature != 1.0:
                candidate = candidate.with_temperature(temperature)
            scores = {
                role: evaluate_predictive(model, tokenizer, examples, posterior=candidate, **evaluate_options)
                for role, examples in (("select", select_examples), ("report", report_examples))
            }
            configs.append({"fraction": fraction, "temperature": temperature, **scores})
            logger.info(
                "fraction %.3f temperature %g: select %s %.4f", fraction, temperature, select_by,
                predictive_metrics(scores["select"])[select_by],
            )  # fmt: skip
    finally:
        posterior.apply_mean(model)
    values = [predictive_metrics(c["select"])[select_by] for c in configs]
    best = max(values) if SELECTION_CRITERIA[select_by] else min(values)
    return {"configs": configs, "chosen": values.index(best), "select_by": select_by}


def plot_tradeoff(sweep: dict, path: str, ece_key: str = "ece_10") -> None:
    """Accuracy against ECE for every configuration on both splits, the chosen one circled, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for role, marker in (("select", "o"), ("report", "s")):
        points = [predictive_metrics(c[role]) for c in sweep["configs"]]
        xs, ys = [100 * p[ece_key] for p in points], [100 * p["accuracy"] for p in points]
        axes.plot(xs, ys, marker=marker, linestyle="-", alpha=0.8, label=f"{role} split")
        for config, x, y in zip(sweep["configs"], xs, ys):
            axes.annotate(f"{config['fraction']:g}/{config['temperature']:g}", (x, y), fontsize=7,
                          textcoords="offset points", xytext=(4, 3))  # fmt: skip
        chosen = points[sweep["chosen"]]
        axes.scatter([100 * chosen[ece_key]], [100 * chosen["accuracy"]], s=220, facecolors="none",
                     edgecolors="black", linewidths=1.5)  # fmt: skip
    axes.set_xlabel(f"ECE ({ece_key.split('_')[1]} bins, %)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"Pruning fraction / temperature (circled: chosen by {sweep['select_by']} on the select split)",
                   fontsize=8)  # fmt: skip
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
