"""The preview sweep: merge the inputs at many weightings α by several methods, evaluate every merged adapter on
every input's task (at its weights: a merged adapter has no posterior to sample, except `posterior --space factor`),
and write the trade-off table, the plot of task-A score against task-B score, and the cost of each point.

One base model is loaded once; each merged adapter is added to it, scored and deleted, so a point costs its merge
plus its evaluation, never a model load. The inputs alone and reference runs (multitask finetunes) are scored the
same way, as the points the merges are read against.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time

from .runs import POSTERIOR_METHODS, MergeInput, check_inputs, merge_adapters, read_input

logger = logging.getLogger(__name__)

SWEEP_NAME, SWEEP_TABLE_NAME, SWEEP_PLOT_NAME = "sweep.json", "sweep.md", "sweep.png"
COLUMNS = ("accuracy", "nll", "ece_10")


def weight_points(num_runs: int, values=(0.25, 0.5, 0.75, 1.0), steps: int = 4) -> list[tuple[float, ...]]:
    """Two runs: the grid values x values; more: the simplex lattice {k/steps, Σ = 1} without its corners."""
    if num_runs == 2:
        return [tuple(map(float, point)) for point in itertools.product(values, repeat=2)]
    points = [p for p in itertools.product(range(steps + 1), repeat=num_runs) if sum(p) == steps and max(p) < steps]
    return [tuple(k / steps for k in point) for point in points]


class AdapterScorer:
    """One base model (of the first input) that scores any adapter of the same shape family on the given splits."""

    def __init__(self, first_dir: str, splits: dict[str, object], batch_size: int = 32):
        from ..choice import format_examples
        from ..rundir import load_run

        self.run = load_run(first_dir)
        formatted = functools.partial(format_examples, tokenizer=self.run.tokenizer, model_args=self.run.model_args)
        self.examples = {name: formatted(split.examples) for name, split in splits.items()}
        self.max_length = getattr(self.run.recipe.data, "max_length", None) if self.run.recipe else None
        self.batch_size = batch_size
        self._count = 0

    def score(self, tensors: dict, config: dict, names=None, per_example: bool = False) -> dict[str, dict]:
        """Accuracy, NLL and ECE (10 bins) at the adapter's weights, per split name (all, or those in `names`); with
        `per_example`, also each example's 1/0 hit ("correct", in the split's order), for paired comparisons."""
        import torch
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict

        from ..evaluation.predict import predict

        model, name = self.run.model, f"scored{self._count}"
        self._count += 1
        previous = model.active_adapter
        model.add_adapter(name, LoraConfig(**{k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}))
        set_peft_model_state_dict(model, tensors, adapter_name=name)
        model.set_adapter(name)
        try:
            results = {}
            for split, examples in self.examples.items():
                if names is not None and split not in names:
                    continue
                predictions = predict(model, self.run.tokenizer, examples, num_samples=0, max_length=self.max_length,
                                      batch_size=self.batch_size)  # fmt: skip
                metrics = predictions.metrics()["mean"]
                results[split] = {column: metrics[column] for column in COLUMNS}
                if per_example:  # in the split's order, which predict keeps
                    if list(predictions.ids) != [example.id for example in examples]:
                        raise RuntimeError(f"{split}: the predictions are not in the split's order")
                    hits = predictions.mean.argmax(dim=1) == torch.as_tensor(predictions.gold)
                    results[split]["correct"] = hits.int().tolist()
        finally:
            model.set_adapter(previous)
            model.delete_adapter(name)
        return results


def _point(scorer: AdapterScorer, label: str, tensors: dict, config: dict, merge_seconds: float, **fields) -> dict:
    start = time.perf_counter()
    scores = scorer.score(tensors, config)
    row = {"label": label, **fields, "scores": scores, "merge_seconds": merge_seconds,
           "eval_seconds": time.perf_counter() - start}  # fmt: skip
    logger.info("%s %s: %s", label, fields.get("weights", ""),
                "; ".join(f"{s} acc {v['accuracy']:.3f}" for s, v in scores.items()))  # fmt: skip
    return row


def method_label(spec: dict) -> str:
    """The method and the settings that matter to it, e.g. "uncertainty (space=delta, base_precision=1.0)"."""
    shown = {"space": spec["method"] in POSTERIOR_METHODS, "density": True,
             "base_precision": spec["method"] == "uncertainty"}  # fmt: skip
    extras = [f"{k}={spec[k]}" for k, show in shown.items() if show and spec.get(k) is not None]
    return spec["method"] + (f" ({', '.join(extras)})" if extras else "")


def sweep_merges(inputs: list[MergeInput], specs: list[dict], points: list[tuple[float, ...]],
                 scorer: AdapterScorer, references: list[str] = (), score_inputs: bool = True,
                 done: dict | None = None, on_row=None) -> list[dict]:  # fmt: skip
    """Rows of the sweep: every input alone, every reference run, every (method spec, weights) merge, scored.

    `specs`: dicts of `merge_adapters`' options (method, space, density, rank, base_precision, seed). `done` maps
    a row's key to a row already computed (a resumed study); `on_row(row)` is called after each new row.
    """
    done = dict(done or {})
    rows = []

    def add(key, compute):
        row = done.get(key) or compute()
        row["key"] = key
        if key not in done and on_row is not None:
            on_row(row)
        rows.append(row)

    if score_inputs:
        for run in inputs:
            add(f"input:{run.directory}", lambda r=run: _point(scorer, "input", r.tensors, r.config, 0.0,
                                                                 dir=r.directory, task=r.task))  # fmt: skip
    for directory in references:

        def reference(directory=directory):
            run = read_input(directory)
            return _point(scorer, "reference", run.tensors, run.config, 0.0, dir=run.directory, task=run.task)

        add(f"reference:{directory}", reference)
    for spec in specs:
        for weights in points:

            def merged(spec=spec, weights=weights):
                check_inputs(inputs, spec["method"], spec.get("space", "delta"), list(weights), spec.get("density"))
                start = time.perf_counter()
                tensors, config, _ = merge_adapters(inputs, weights=list(weights), **spec)
                seconds = time.perf_counter() - start
                return _point(scorer, method_label(spec), tensors, config, seconds, spec=spec, weights=list(weights))

            add(f"{method_label(spec)}:{list(weights)}", merged)
    return rows


def sweep_table(rows: list[dict], splits: list[str]) -> str:
    """The trade-off table (markdown): one line per point, accuracy / NLL / ECE per split, seconds per point."""
    header = ["point", "weights", *(f"{split} {column}" for split in splits for column in ("acc", "nll", "ece")),
              "merge s", "eval s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        name = row["label"] if row["label"] not in ("input", "reference") else f"{row['label']} {row.get('task')}"
        cells = [name, str(row.get("weights", "")),
                 *(f"{row['scores'][s][c]:.3f}" for s in splits for c in COLUMNS),
                 f"{row['merge_seconds']:.2f}", f"{row['eval_seconds']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], split_x: str, split_y: str, path: str, column: str = "accuracy") -> None:
    """Task-A score against task-B score: one colour per method (its points joined along the first weight),
    the inputs alone as squares and the reference finetunes as stars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 5.0), dpi=120)
    axis = figure.subplots()
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    for label, group in by_label.items():
        xs = [r["scores"][split_x][column] for r in group]
        ys = [r["scores"][split_y][column] for r in group]
        if label in ("input", "reference"):
            marker = "s" if label == "input" else "*"
            axis.scatter(xs, ys, marker=marker, s=90, color="black" if label == "input" else "red", zorder=3,
                         label="inputs alone" if label == "input" else "multitask finetune")  # fmt: skip
            continue
        order = sorted(range(len(group)), key=lambda i: (group[i]["weights"][0], -group[i]["weights"][-1]))
        axis.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", markersize=3, linewidth=1, label=label)
    axis.set_xlabel(f"{split_x} {column}")
    axis.set_ylabel(f"{split_y} {column}")
    axis.set_title("merged adapters as the weights α vary")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
