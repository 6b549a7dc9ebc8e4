"""Report files of an evaluation: per-example probabilities (jsonl), markdown tables, and the PNG plots.

Columns come from the metric registry (`metrics.METRICS`): every registered metric is a column of eval.md,
the summary ones of the sweep table and the model card.
"""

from __future__ import annotations

import os

from ..fileio import json_line
from ..filenames import predictions_file_name, reliability_plot_name, selective_plot_name
from .metrics import BIN_EDGES, DEFAULT_ECE_BINS, format_metric, metric_value, table_columns
from .plots import plot_reliability, plot_selective


def write_jsonl(path: str, rows) -> None:
    with open(path, "w") as f:
        f.writelines(json_line(row) for row in rows)


def predictives(run_metrics: dict) -> list[tuple[str, dict]]:
    """(name, metrics) of each predictive of one run's result: the weights ("mean"; an ensemble's first member), then
    the averaged predictive ("samples S=", "MC dropout S=", "ensemble M=")."""
    kind = run_metrics.get("sample_kind")
    items = [("member 1" if kind == "ensemble" else "mean", run_metrics["mean"])]
    if "sampled" in run_metrics:
        s = run_metrics["sampled"]["samples"]
        name = {"mc_dropout": f"MC dropout S={s}", "ensemble": f"ensemble M={s}"}.get(kind, f"samples S={s}")
        items.append((name, run_metrics["sampled"]))
    return items


def table_cells(metrics: dict, columns) -> list[str]:
    """One predictive's cells of `columns` (see `metrics.format_metric`)."""
    return [format_metric(column, metric_value(metrics, column)) for column in columns]


def markdown_table(tasks: dict, ece_bins=DEFAULT_ECE_BINS) -> str:
    """One row per task x run x predictive, a column per registered metric (percent ones x100)."""
    columns = table_columns(ece_bins)
    header = ["task", "split", "n", "run", "predictive", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, entry in tasks.items():
        for run_name, run_metrics in entry["runs"].items():
            for name, metrics in predictives(run_metrics):
                cells = [
                    task,
                    entry["split"],
                    str(entry["num_examples"]),
                    run_name,
                    name,
                    *table_cells(metrics, columns),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_notes(preset, tasks: dict) -> str:
    """What a reader of eval.md must know besides the numbers: the ECE bin edges, every deviation of the protocol
    preset from its paper, and the prompts cut to max_length per task and run."""
    lines = [f"Protocol {preset.name}: ECE bins {BIN_EDGES[preset.ece_edges]}."]
    lines += [f"- Deviation from the paper: {deviation}." for deviation in preset.deviations]
    for task, entry in tasks.items():
        for run, count in entry.get("truncated", {}).items():
            lines.append(f"- {task}, {run}: {count} of {entry['num_examples']} prompts longer than max_length "
                         "(cut in the middle).")  # fmt: skip
    return "\n".join(lines) + "\n"


def sweep_table(sweep: dict, ece_bins=DEFAULT_ECE_BINS) -> str:
    """Every pruning fraction x temperature of a sweep on both splits, the chosen one marked."""
    columns = table_columns(ece_bins, summary_only=True)
    header = ["fraction", "temperature", "split", "predictive", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, config in enumerate(sweep["configs"]):
        mark = " (chosen)" if index == sweep["chosen"] else ""
        for role in ("select", "report"):
            for name, metrics in predictives(config[role]):
                cells = [f"{config['fraction']:g}{mark}", f"{config['temperature']:g}", role, name,
                         *table_cells(metrics, columns)]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_task_files(directory: str, task: str, predictions_by_run: dict, metrics_by_run: dict, num_bins: int,
                     ece_edges: str = "right") -> dict:  # fmt: skip
    """Per-example jsonl per run, the reliability diagram and the selective-prediction plot; returns their names."""
    files = {}
    curves = []
    for run_name, predictions in predictions_by_run.items():
        file_name = predictions_file_name(task, run_name)
        write_jsonl(os.path.join(directory, file_name), predictions.rows())
        files[f"predictions_{run_name}"] = file_name
        for index, (label, metrics) in enumerate(predictives(metrics_by_run[run_name])):
            probs = predictions.mean if index == 0 else predictions.predictive()
            curves.append((f"{run_name} {label}", probs, predictions.gold, metrics))
    return {**files, **write_task_plots(directory, task, curves, num_bins, ece_edges)}


def write_task_plots(directory: str, task: str, curves: list[tuple], num_bins: int, ece_edges: str = "right") -> dict:
    """The reliability diagram and the selective-prediction plot of one task; returns their names.

    `curves` holds (label, probs N x K, gold N, metrics) per predictive, the metrics with their `selective` result.
    """
    files = {"reliability": reliability_plot_name(task), "selective": selective_plot_name(task)}
    plot_reliability(task, curves, os.path.join(directory, files["reliability"]), num_bins, ece_edges)
    selective = [(label, metrics["selective"]) for label, _, _, metrics in curves]
    plot_selective(task, selective, os.path.join(directory, files["selective"]))
    return files


def generation_table(tasks: dict, ece_bins=DEFAULT_ECE_BINS) -> str:
    """Selective generation (eval.json's "tasks" of generative tasks): one row per task x run x confidence score, a
    column per `selective.SELECTIVE_METRICS` entry (x100), "n/a" where a metric is undefined, then each run's
    undefined scores and why."""
    from .selective import SELECTIVE_METRICS

    columns = [c for metric in SELECTIVE_METRICS.values() for c in metric.columns(ece_bins)]
    header = ["task", "split", "n", "run", "samples", "score", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = {}  # one line per distinct note (AUROC and PRR are undefined for every score alike)
    for task, entry in tasks.items():
        for run_name, run in entry["runs"].items():
            samples = f"{run['samples']} {run['sample_kind']}" if run["samples"] else "none"
            for score, metrics in run["scores"].items():
                cells = [_percent(metrics, column) for column in columns]
                lines.append("| " + " | ".join([task, entry["split"], str(entry["num_examples"]), run_name, samples,
                                                score, *cells]) + " |")  # fmt: skip
                for column, why in metrics["undefined"].items():
                    notes[f"- {task}, {run_name}: {column} n/a: {why}."] = None
            for score, why in run["undefined_scores"].items():
                notes[f"- {task}, {run_name}: {score} undefined: {why}."] = None
    legend = ("Metrics x100 (fractions in eval.json); ece only for scores that are probabilities; accuracy is the "
              "chosen answers' (the task's judge), the same for every score.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + legend + "\n" + "".join(line + "\n" for line in notes)


def _percent(metrics: dict, column: str) -> str:
    value = metrics.get(column)
    if value is None:
        return "-"  # not computed (no ECE of a score that is no probability)
    return "n/a" if value != value else f"{100 * value:.1f}"
