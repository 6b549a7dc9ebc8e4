"""The PNG plots of an evaluation, drawn with matplotlib's object API (`Figure`), never pyplot: library code must
not switch a notebook's backend or keep figures alive in pyplot's global registry.

Every plot shows all evaluated predictives of one task side by side (e.g. IVON at the mean, IVON with S samples,
the AdamW baseline at its weights and with MC dropout), so a figure compares methods under one protocol. Titles
carry the registry's summary metrics of each predictive (`ivon_lora.evaluation.metrics.METRICS`).
"""

from __future__ import annotations

from .metrics import (
    BIN_EDGES,
    expected_calibration_error,
    format_metric,
    metric_value,
    reliability_bins,
    table_columns,
)


def _figure(**options):
    from matplotlib.figure import Figure

    return Figure(**options)


def summary_line(metrics: dict, ece_bins) -> str:
    """The summary metrics of one predictive, e.g. "accuracy 87.6 | nll 0.725 | ece_10 30.0 | ...", for titles."""
    return " | ".join(f"{column} {format_metric(column, metric_value(metrics, column))}"
                      for column in table_columns(ece_bins, summary_only=True)
                      if metric_value(metrics, column) is not None)  # fmt: skip


# A bin with fewer examples than this share of the panel's (or than SMALL_BIN_MIN) is drawn hatched: its accuracy
# is too noisy to read as a calibration gap.
SMALL_BIN_SHARE = 0.02
SMALL_BIN_MIN = 10


def reliability_figure(task: str, curves: list[tuple[str, object, object, dict]], num_bins: int = 10,
                       edges: str = "right"):  # fmt: skip
    """Reliability diagram, one panel per predictive (`curves`: label, probs N x K, gold N, its metrics).

    Per bin: a bar up to the bin's accuracy, a black tick at its mean confidence, a red line for the gap between
    them, the example count above it; small bins hatched, empty bins marked "empty". With `edges` "left"
    (torchmetrics' [lo, hi)), the bin of confidence exactly 1 is the narrow bar at 1.
    """
    figure = _figure(figsize=(3.4 * len(curves), 4.0), dpi=120)
    axes = figure.subplots(1, len(curves), squeeze=False)
    width = 1.0 / num_bins
    for axis, (label, probs, gold, metrics) in zip(axes[0], curves):
        bins = reliability_bins(probs, gold, num_bins, edges)
        small = max(SMALL_BIN_MIN, SMALL_BIN_SHARE * len(gold))
        for b in bins:
            exact_one = b["lo"] == b["hi"]
            center, bar_width = (1.0, 0.3 * width) if exact_one else ((b["lo"] + b["hi"]) / 2, width)
            if not b["count"]:
                axis.text(center, 0.02, "empty", rotation=90, ha="center", va="bottom", fontsize=5, color="gray")
                continue
            is_small = b["count"] < small
            axis.bar(center, b["accuracy"], width=bar_width, color="#4c72b0", alpha=0.45 if is_small else 1.0,
                     hatch="///" if is_small else None, edgecolor="black", linewidth=0.5)  # fmt: skip
            axis.plot([center, center], [b["accuracy"], b["confidence"]], color="#c44e52", linewidth=1.5)
            axis.plot([center - bar_width / 2, center + bar_width / 2], [b["confidence"]] * 2, color="black",
                      linewidth=1.5)  # fmt: skip
            axis.text(center, min(max(b["accuracy"], b["confidence"]) + 0.02, 0.97), str(b["count"]),
                      ha="center", va="bottom", fontsize=5)  # fmt: skip
        axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ece = expected_calibration_error(probs, gold, num_bins, edges)
        summary = summary_line(metrics, [num_bins]).replace(" | ", "\n", 2).replace(" | ", "; ")
        axis.set_title(f"{label}\nECE-{num_bins} {100 * ece:.1f}%\n{summary}", fontsize=6)
        axis.set_xlim(0, 1 + (0.2 * width if edges == "left" else 0))
        axis.set_ylim(0, 1.05)
        axis.set_xlabel(f"confidence (max probability), {num_bins} bins {BIN_EDGES[edges].split(',')[0]}", fontsize=7)
        axis.set_ylabel("accuracy in the bin", fontsize=7)
        axis.tick_params(labelsize=6)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    legend = [Patch(color="#4c72b0", label="accuracy"), Line2D([], [], color="black", label="mean confidence"),
              Line2D([], [], color="#c44e52", label="gap"),
              Patch(facecolor="#4c72b0", alpha=0.45, hatch="///", label="small bin (noisy)"),
              Line2D([], [], color="gray", linestyle="--", label="calibrated")]  # fmt: skip
    axes[0][0].legend(handles=legend, fontsize=5, loc="upper left")
    figure.suptitle(f"{task}: reliability; numbers above bars are examples per bin", fontsize=8)
    figure.tight_layout()
    return figure


def plot_reliability(task: str, curves: list[tuple[str, object, object, dict]], path: str, num_bins: int = 10,
                     edges: str = "right") -> None:  # fmt: skip
    """Write `reliability_figure` to `path`."""
    reliability_figure(task, curves, num_bins, edges).savefig(path)


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


def plot_selective_generation(title: str, runs: dict[str, dict], path: str) -> None:
    """Selective generation: accuracy of the accepted answers against coverage, one panel per run and one curve per
    confidence score (abstaining on the least confident answers first), AUROC and PRR in the legend; the run's
    accuracy (abstaining at random) dashed; the scores its samples leave undefined listed under the panel.

    `runs`: label -> `GenerativeEvaluation.metrics()` ("accuracy", "scores": {name: selective metrics with their
    "curve"}, "undefined_scores": {name: reason}).
    """
    from .uncertainty import CONFIDENCE_SCORES

    colors = {name: f"C{index}" for index, name in enumerate(CONFIDENCE_SCORES)}  # a score's colour in every panel
    figure = _figure(figsize=(5.2 * len(runs), 4.6), dpi=120)
    axes = figure.subplots(1, len(runs), squeeze=False)[0]
    for axis, (label, run) in zip(axes, runs.items()):
        for name, metrics in run["scores"].items():
            curve = metrics["curve"]
            auroc, prr = (f"{100 * metrics[k]:.1f}" if metrics[k] == metrics[k] else "n/a" for k in ("auroc", "prr"))
            axis.plot([100 * c for c in curve["coverage"]], [100 * a for a in curve["accuracy"]], linewidth=1.2,
                      color=colors.get(name), marker="o" if len(curve["coverage"]) < 3 else None, markersize=3,
                      label=f"{name} (AUROC {auroc}, PRR {prr})")  # fmt: skip
        axis.axhline(100 * run["accuracy"], color="gray", linestyle="--", linewidth=1,
                     label=f"no abstention: accuracy {100 * run['accuracy']:.1f}")  # fmt: skip
        samples = f"{run['samples']} {run['sample_kind']} samples" if run["samples"] else "no samples"
        axis.set_title(f"{label} ({samples}, n={run['num_examples']})", fontsize=8)
        axis.set_xlabel("coverage: share of answers accepted (%)", fontsize=7)
        axis.set_ylabel("accuracy of the accepted answers (%)", fontsize=7)
        axis.set_xlim(0, 101)
        axis.set_ylim(-2, 102)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=6)
        axis.legend(fontsize=5, loc="best")
        if run["undefined_scores"]:
            axis.text(0.0, -0.14, "undefined: " + "; ".join(f"{n} ({why})" for n, why in run["undefined_scores"].items()),
                      transform=axis.transAxes, fontsize=5, va="top", wrap=True)  # fmt: skip
    figure.suptitle(f"{title}: selective generation (answers accepted from the most confident down, per score)",
                    fontsize=8)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path)
