"""The PNG plots of an evaluation, drawn with matplotlib's object API (`Figure`), never pyplot: library code must
not switch a notebook's backend or keep figures alive in pyplot's global registry.

Every plot shows all evaluated predictives of one task side by side (e.g. IVON at the mean, IVON with S samples,
the AdamW baseline at its weights and with MC dropout), so a figure compares methods under one protocol. Titles
carry the registry's summary metrics of each predictive (`ivon_lora.evaluation.metrics.METRICS`).
"""

from __future__ import annotations

from .metrics import expected_calibration_error, format_metric, metric_value, reliability_bins, table_columns


def _figure(**options):
    from matplotlib.figure import Figure

    return Figure(**options)


def summary_line(metrics: dict, ece_bins) -> str:
    """The summary metrics of one predictive, e.g. "accuracy 87.6 | nll 0.725 | ece_10 30.0 | ...", for titles."""
    return " | ".join(f"{column} {format_metric(column, metric_value(metrics, column))}"
                      for column in table_columns(ece_bins, summary_only=True)
                      if metric_value(metrics, column) is not None)  # fmt: skip


def plot_reliability(task: str, curves: list[tuple[str, object, object]], path: str, num_bins: int = 10) -> None:
    """Reliability diagram, one panel per predictive: per-bin accuracy against confidence, with the gap and counts.

    `curves` holds (label, probs N x K, gold N, metrics of that predictive).
    """
    figure = _figure(figsize=(3.3 * len(curves), 3.9), dpi=120)
    axes = figure.subplots(1, len(curves), squeeze=False)
    for axis, (label, probs, gold, metrics) in zip(axes[0], curves):
        bins = reliability_bins(probs, gold, num_bins)
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        accuracy = [b["accuracy"] or 0.0 for b in bins]
        confidence = [b["confidence"] if b["count"] else c for b, c in zip(bins, centers)]
        width = 1.0 / num_bins
        axis.bar(centers, accuracy, width=width, edgecolor="black", linewidth=0.5, color="#4c72b0", label="accuracy")
        axis.bar(centers, [c - a if b["count"] else 0 for c, a, b in zip(confidence, accuracy, bins)], bottom=accuracy,
                 width=width, color="#dd8452", alpha=0.5, edgecolor="#dd8452", label="gap")  # fmt: skip
        axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ece = expected_calibration_error(probs, gold, num_bins)
        summary = summary_line(metrics, [num_bins]).replace(" | ", "\n", 2).replace(" | ", "; ")
        axis.set_title(f"{label}\nECE-{num_bins} {100 * ece:.1f}%\n{summary}", fontsize=6)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        twin = axis.twinx()
        twin.plot(centers, [b["count"] / len(gold) for b in bins], "k.:", linewidth=0.8, markersize=3)
        twin.set_ylim(0, 1)
        twin.tick_params(labelsize=6)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=6, loc="upper left")
    figure.suptitle(f"{task}: reliability (bars) and share of examples per bin (dotted, right axis)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def plot_selective(task: str, curves: list[tuple[str, dict]], path: str) -> None:
    """Accuracy against coverage (abstaining on the least confident first), one line per predictive."""
    figure = _figure(figsize=(4.6, 3.6), dpi=120)
    axis = figure.subplots()
    for label, selective in curves:
        curve = selective["curve"]
        axis.plot([100 * c for c in curve["coverage"]], [100 * a for a in curve["accuracy"]],
                  label=f"{label} (AURC {100 * selective['aurc']:.1f})", linewidth=1.2)  # fmt: skip
    axis.set_xlabel("coverage (%)")
    axis.set_ylabel("accuracy on the accepted (%)")
    axis.set_title(f"{task}: selective prediction", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def plot_tradeoff(sweep: dict, path: str, ece_key: str = "ece_10") -> None:
    """Accuracy against ECE (`ece_key`: the protocol's headline) of every configuration, one panel per split, the
    chosen one circled, as a PNG; the chosen configuration's summary metrics in the title.

    Colour is the pruning fraction and the marker the temperature, so overlapping points stay readable.
    """
    from .sweep import predictive_metrics

    configs = sweep["configs"]
    fractions = [c["fraction"] for c in configs]
    temperatures = sorted({c["temperature"] for c in configs})
    markers = dict(zip(temperatures, "osD^v<>p*h"))
    figure = _figure(figsize=(10, 4.6), dpi=120)
    axes = figure.subplots(1, 2)
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
        axis.set_title(f"{role} split; chosen: {summary_line(best, [int(ece_key.split('_')[1])])}", fontsize=6)
        axis.set_xlabel(f"ECE ({ece_key.split('_')[1]} bins, %)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.colorbar(scatter, ax=list(axes), label="pruning fraction")
    figure.suptitle(f"Posterior pruning / temperature sweep (chosen by {sweep['select_by']} on the select split)",
                    fontsize=9)  # fmt: skip
    figure.savefig(path)
