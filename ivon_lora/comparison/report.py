"""The report of a comparison: compare.json (everything, with every run's resolved recipe and versions), compare.md
(the tables a reader needs) and compare.png (each method's differences with their intervals)."""

from __future__ import annotations

import os

from .plan import BASELINES
from .stats import interval_text, markdown_table

JSON_NAME, TABLE_NAME, PLOT_NAME = "compare.json", "compare.md", "compare.png"
BOOTSTRAP_METHOD = (
    "paired bootstrap over the reported split's examples: each replicate draws the examples with replacement once and "
    "applies the draw to every seed and both rows; the difference is the mean over seeds of each seed's difference, "
    "its interval the replicates' 2.5% and 97.5% quantiles (the test set's sampling error; the seeds' spread is in "
    "per_seed)"
)


def summary_text(summary: dict, column: str) -> str:
    from ..evaluation.metrics import metric_of

    scale, digits = (100.0, 1) if metric_of(column).percent else (1.0, 3)
    if summary["mean"] is None:
        return "-"
    return interval_text(summary["mean"], summary["interval"], scale, digits)


def difference_text(difference: dict) -> str:
    from ..evaluation.metrics import metric_of

    scale, digits = (100.0, 1) if metric_of(difference["metric"]).percent else (1.0, 3)
    return interval_text(difference["difference"], difference["interval"], scale, digits, signed=True)


def markdown(report: dict) -> str:
    """compare.md from compare.json's content."""
    columns = list(report["metrics"])
    seeds = report["seeds"]
    lines = [
        f"# Comparison on {report['task']}",
        "",
        f"Reported split `{report['splits']['reported']}` ({report['num_examples']} examples), seeds "
        f"{', '.join(map(str, seeds['reported']))}; settings chosen by {report['select_metric']} on "
        f"`{report['splits']['selection']}` over seeds {', '.join(map(str, seeds['selection'])) or '(no grid)'}.",
        "",
        "## Methods",
        "",
    ]
    for name, method in report["methods"].items():
        budget = method["budget"]
        chosen = method["candidates"][method["chosen"]]["settings"]
        grid = "; ".join(f"{key} in {', '.join(values)}" for key, values in method["grid"].items()) or "none"
        lines.append(f"- **{name}** ({method['recipe']}): grid {grid} ({len(method['candidates'])} candidate(s)); "
                     f"chosen {', '.join(f'{k}={v}' for k, v in chosen.items()) or 'the recipe as written'}; "
                     f"{budget['steps']} steps x {budget['examples_per_step']} examples; baselines: "
                     f"{', '.join(method['baselines']) or 'none'}")  # fmt: skip
    header = ["row", *(_title(c) for c in columns)]
    lines += ["", "## Mean over seeds [95% t-interval over seeds]", "",
              markdown_table(header, [[name, *(summary_text(row["summary"][c], c) for c in columns)]
                                      for name, row in report["rows"].items()])]  # fmt: skip
    lines += ["## Paired differences, method - other [95% interval]", "",
              "Lower is better for NLL, ECE and Brier, higher for accuracy; **bold**: the interval excludes 0. "
              f"Seeds: how many of the {len(seeds['reported'])} seeds favour the method.", ""]  # fmt: skip
    rows = []
    by_pair = {}
    for difference in report["differences"]:
        by_pair.setdefault((difference["method"], difference["against"]), {})[difference["metric"]] = difference
    for (method, other), metrics in by_pair.items():
        cells = []
        for column in columns:
            difference = metrics[column]
            text = difference_text(difference)
            text = f"**{text}**" if difference["verdict"] != "no clear difference" else text
            cells.append(f"{text} ({difference['seeds_favouring_method']}/{len(difference['per_seed'])})")
        rows.append([method, other, *cells])
    lines.append(markdown_table(["method", "against", *(_title(c) for c in columns)], rows))
    lines += ["How: " + report["bootstrap"]["method"] + f"; {report['bootstrap']['replicates']} replicates.", ""]
    lines += [f"- {name}: {text}" for name, text in report["baselines"].items()]
    if report["notes"]:
        lines += ["", "Notes:", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def _title(column: str) -> str:
    from ..evaluation.metrics import metric_of

    return f"{column} (%)" if metric_of(column).percent else column


def plot(report: dict, path: str) -> None:
    """One panel per metric: each method's difference against every other row, with its 95% interval and the zero
    line, the better side named."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..evaluation.metrics import metric_of

    columns = list(report["metrics"])
    pairs = list(dict.fromkeys((d["method"], d["against"]) for d in report["differences"]))
    figure = Figure(figsize=(4.2 * len(columns), 1.2 + 0.42 * len(pairs)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(columns), squeeze=False)[0]
    for axis, column in zip(axes, columns):
        scale = 100.0 if metric_of(column).percent else 1.0
        found = {(d["method"], d["against"]): d for d in report["differences"] if d["metric"] == column}
        for y, pair in enumerate(pairs):
            difference = found[pair]
            low, high = (scale * v for v in difference["interval"])
            value = scale * difference["difference"]
            color = {"better": "C2", "worse": "C3"}.get(difference["verdict"], "C7")
            axis.errorbar(value, y, xerr=[[value - low], [high - value]], fmt="o", color=color, capsize=3)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(pairs)), [f"{m} vs {o}" for m, o in pairs] if axis is axes[0] else [""] * len(pairs),
                        fontsize=8)  # fmt: skip
        axis.invert_yaxis()
        better = "right" if report["metrics"][column] else "left"
        axis.set_xlabel(f"{_title(column)}: method - other\n(better to the {better})", fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{report['task']}, {report['splits']['reported']} split, seeds "
                    f"{', '.join(map(str, report['seeds']['reported']))}: differences with 95% paired-bootstrap "
                    "intervals (green: method better, red: worse, grey: interval holds 0)", fontsize=9)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, format="png")


def build_report(plan, outcome, table: dict, differences: list[dict], environment: dict, command: list[str]) -> dict:
    """compare.json's content."""
    import dataclasses

    import yaml

    from ..filenames import METRICS_NAME, RECIPE_NAME
    from ..fileio import read_json

    config = plan.config
    first = next(iter(table.values()))
    num_examples = None
    runs = {}
    for run_dir, record in outcome.runs.items():
        with open(os.path.join(run_dir, RECIPE_NAME)) as f:
            recipe = yaml.safe_load(f)
        metrics = read_json(os.path.join(run_dir, METRICS_NAME))
        runs[os.path.relpath(run_dir, config.out)] = {**record, "recipe": recipe,
                                                      "environment": metrics.get("environment"),
                                                      "train": metrics.get("train")}  # fmt: skip
    for row in table.values():
        for eval_dir in row["eval_dirs"].values():
            num_examples = read_json(os.path.join(eval_dir, "eval.json"))["tasks"][plan.task]["num_examples"]
            break
        break
    methods = {}
    for method in plan.methods:
        selection = outcome.selection.get(method.name)
        methods[method.name] = {
            "recipe": method.path, "grid": method.axes, "baselines": list(method.baselines), "budget": method.budget,
            "candidates": [{"settings": settings,
                            "selection": ({str(s): v for s, v in selection["values"][i].items()} if selection else None),
                            "mean": selection["means"][i] if selection else None}
                           for i, settings in enumerate(method.candidates)],
            "chosen": outcome.chosen[method.name],
            "early_stopping": {str(s): {"step": v["step"], "nll_by_step": {str(k): x for k, x in v["nll"].items()}}
                               for s, v in outcome.stopped.get(method.name, {}).items()},
        }  # fmt: skip
    rows = {name: {**row, "per_seed": {str(s): v for s, v in row["per_seed"].items()},
                   "eval_dirs": {str(s): os.path.relpath(d, config.out) for s, d in row["eval_dirs"].items()}}
            for name, row in table.items()}  # fmt: skip
    return {
        "command": command,
        "config": dataclasses.asdict(config),
        "task": plan.task,
        "splits": {"train": plan.train_split, "selection": plan.select_split, "reported": plan.test_split},
        "num_examples": num_examples,
        "seeds": {"selection": plan.selection_seeds, "reported": plan.reported_seeds},
        "select_metric": config.select_metric,
        "metrics": {column: d for column, d in _directions(first, differences).items()},
        "methods": methods,
        "baselines": {name: BASELINES[name] for name in plan.baselines},
        "rows": rows,
        "differences": differences,
        "bootstrap": {"method": BOOTSTRAP_METHOD, "replicates": config.bootstrap, "seed": 0, "confidence": 0.95},
        "notes": plan.notes,
        "runs": runs,
        "environment": environment,
    }


def _directions(row: dict, differences: list[dict]) -> dict[str, bool]:
    """metric -> higher is better, in the rows' column order."""
    higher = {d["metric"]: d["higher_is_better"] for d in differences}
    return {column: higher.get(column, column == "accuracy") for column in row["summary"]}


def write_report(out: str, report: dict) -> None:
    """compare.json, compare.md and compare.png into `out`, each written whole (atomically)."""
    from ..fileio import atomic_write, write_json_atomic

    write_json_atomic(os.path.join(out, JSON_NAME), report)

    def write_table(path):
        with open(path, "w") as f:
            f.write(markdown(report))

    atomic_write(os.path.join(out, TABLE_NAME), write_table)
    atomic_write(os.path.join(out, PLOT_NAME), lambda path: plot(report, path))
