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
            candidate = posterior.at_test_time(fraction, temperature, **prune_options)
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
    """Accuracy against ECE of every configuration, one panel per split, the chosen one circled, as a PNG.

    Colour is the pruning fraction and the marker the temperature, so overlapping points stay readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sweep["configs"]
    fractions = [c["fraction"] for c in configs]
    temperatures = sorted({c["temperature"] for c in configs})
    markers = dict(zip(temperatures, "osD^v<>p*h"))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    for axis, role in zip(axes, ("select", "report")):
        points = [predictive_metrics(c[role]) for c in configs]
        for temperature in temperatures:
            chosen = [i for i, c in enumerate(configs) if c["temperature"] == temperature]
            scatter = axis.scatter(
                [100 * points[i][ece_key] for i in chosen], [100 * points[i]["accuracy"] for i in chosen],
                c=[fractions[i] for i in chosen], cmap="viridis", vmin=0, vmax=max(max(fractions), 1e-9),
                marker=markers[temperature], s=50, label=f"temperature {temperature:g}", edgecolors="black",
                linewidths=0.4,
            )  # fmt: skip
        best = points[sweep["chosen"]]
        axis.scatter([100 * best[ece_key]], [100 * best["accuracy"]], s=260, facecolors="none", edgecolors="red",
                     linewidths=1.5, label="chosen")  # fmt: skip
        axis.set_title(f"{role} split", fontsize=9)
        axis.set_xlabel(f"ECE ({ece_key.split('_')[1]} bins, %)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.colorbar(scatter, ax=list(axes), label="pruning fraction")
    figure.suptitle(f"Posterior pruning / temperature sweep (chosen by {sweep['select_by']} on the select split)",
                    fontsize=9)  # fmt: skip
    figure.savefig(path)
    plt.close(figure)
