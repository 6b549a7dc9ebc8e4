"""From the evaluations of a comparison to its numbers: each row's per-example probabilities on the reported split
(read from the evaluator's per-example predictions files), its metrics per seed, and the paired differences.

A row is one predictive on the reported split, per reported seed: each method's own (an IVON run's S-sample
predictive, any other run at its weights) and its baselines ("+ temperature", "early-stopped", "ensemble", "MC
dropout"). Each row's metric on the full split is the evaluator's own number in eval.json; the per-example values the
bootstrap resamples are checked to give that number back (1e-9), so the intervals are about the evaluator's metric.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .stats import paired_bootstrap, summarize

BASELINE_ROWS = {"temperature": "+ temperature", "early_stopping": "early-stopped", "ensemble": "ensemble",
                 "mc_dropout": "MC dropout"}  # fmt: skip
AGREEMENT = 1e-9  # per-example values vs the evaluator's metric on the full split


def read_predictive(eval_dir: str, result: dict, task: str, label: str, predictive: str):
    """(ids, gold, probabilities N x K) of run `label`'s `predictive` ("mean" or "sampled": the mean of its
    samples) from the evaluation in `eval_dir`, and the evaluator's metrics of that predictive."""
    import torch

    from ..evaluation.predict import read_predictions

    path = os.path.join(eval_dir, result["tasks"][task]["files"][f"predictions_{label}"])
    mean, samples = read_predictions(path)
    ids, gold = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            ids.append(row["id"])
            gold.append(row["gold"])
    probs = samples.mean(dim=0) if predictive == "sampled" else mean
    return ids, np.asarray(gold), probs.to(torch.float64).numpy(), result["tasks"][task]["runs"][label][predictive]


def metric_columns(result: dict) -> dict[str, bool]:
    """column -> higher is better, of the metrics compared: every metric the evaluator computes (accuracy, nll,
    ece_BINS, brier) at the evaluation's bin counts."""
    from ..evaluation.metrics import computed_columns

    return computed_columns(result["protocol"]["ece_bins"])


def per_example(probs: np.ndarray, gold: np.ndarray, column: str, edges: str):
    """(per-example values, vectorized statistic or None for their mean) of `column`: accuracy, nll and brier are
    means of per-example values; ECE (`ece_BINS`) is the sum over the evaluator's bins of |confidence - accuracy|
    mass, so its rows are (bin, confidence - hit) and its statistic sums them per bin."""
    import torch

    from ..evaluation.metrics import _bin_index

    rows = np.arange(len(gold))
    if column == "accuracy":
        return (probs.argmax(axis=1) == gold).astype(np.float64), None
    if column == "nll":
        return -np.log(np.maximum(probs[rows, gold], 1e-12)), None
    if column == "brier":
        onehot = np.zeros_like(probs)
        onehot[rows, gold] = 1.0
        return ((probs - onehot) ** 2).sum(axis=1), None
    if column.startswith("ece_"):
        num_bins = int(column.removeprefix("ece_"))
        confidence = probs.max(axis=1)
        hits = (probs.argmax(axis=1) == gold).astype(np.float64)
        bins = _bin_index(torch.from_numpy(confidence), num_bins, edges).numpy()
        slots = num_bins + 1

        def ece(block: np.ndarray) -> np.ndarray:  # R x n x 2 -> R
            count, n = block.shape[0], block.shape[1]
            flat = block[..., 0].astype(np.int64) + slots * np.arange(count)[:, None]
            sums = np.bincount(flat.ravel(), weights=block[..., 1].ravel(), minlength=count * slots)
            return np.abs(sums.reshape(count, slots)).sum(axis=1) / n

        return np.stack([bins.astype(np.float64), confidence - hits], axis=1), ece
    raise KeyError(f"No per-example form of metric {column!r}")


def rows_of(plan, outcome) -> dict[str, dict]:
    """row name -> {"method", "baseline", "seeds": {seed: (eval dir, label, predictive)}} for every row."""
    rows = {}
    for method in plan.methods:
        own, tests = {}, outcome.tests
        for seed in plan.reported_seeds:
            eval_dir, result = tests[(method.name, seed, "run")]
            label = _label(result, outcome.reported[method.name][seed])
            predictive = "sampled" if method.has_posterior and "sampled" in _runs(result, plan.task)[label] else "mean"
            own[seed] = (eval_dir, result, label, predictive)
        rows[method.name] = {"method": method.name, "baseline": None, "seeds": own}
        for baseline in method.baselines:
            seeds = {}
            for seed in plan.reported_seeds:
                eval_dir, result, label, predictive = own[seed]
                if baseline == "temperature":
                    seeds[seed] = (eval_dir, result, f"{label} + TS", "mean")
                elif baseline == "mc_dropout":
                    seeds[seed] = (eval_dir, result, label, "sampled")
                elif baseline == "ensemble":
                    ensemble_dir, ensemble = tests[(method.name, "ensemble", "run")]
                    seeds[seed] = (ensemble_dir, ensemble, "ensemble", "sampled")
                elif (method.name, seed, "stopped") in tests:
                    stopped_dir, stopped = tests[(method.name, seed, "stopped")]
                    checkpoint = outcome.stopped[method.name][seed]["dir"]
                    seeds[seed] = (stopped_dir, stopped, _label(stopped, checkpoint), predictive)
                else:  # the final run had the lowest selection NLL: the method's own row
                    seeds[seed] = own[seed]
            rows[f"{method.name} {BASELINE_ROWS[baseline]}"] = {"method": method.name, "baseline": baseline,
                                                                "seeds": seeds}  # fmt: skip
    return rows


def score_rows(plan, outcome, replicates: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """(each row's metrics per seed and their summary over seeds, every paired difference of a method against each
    other row) on the reported split."""
    rows = rows_of(plan, outcome)
    first_result = next(iter(rows.values()))["seeds"][plan.reported_seeds[0]][1]
    columns = metric_columns(first_result)
    edges = first_result["protocol"]["preset"].get("ece_edges", "right")
    values, ids_seen = {}, None
    table = {}
    for name, row in rows.items():
        per_seed = {}
        for run_seed, (eval_dir, result, label, predictive) in row["seeds"].items():
            ids, gold, probs, reported = read_predictive(eval_dir, result, plan.task, label, predictive)
            if ids_seen is None:
                ids_seen = ids
            elif ids != ids_seen:
                raise RuntimeError(f"{eval_dir}: {label} was scored on other examples than the other rows")
            for column in columns:
                per_example_values, statistic = per_example(probs, gold, column, edges)
                values[(name, run_seed, column)] = (per_example_values, statistic)
                mine = float(per_example_values.mean() if statistic is None else statistic(per_example_values[None])[0])
                if abs(mine - reported[column]) > AGREEMENT:
                    raise RuntimeError(f"{eval_dir}: {label} {column} {mine} from its predictions file, "
                                       f"{reported[column]} in eval.json")  # fmt: skip
                per_seed.setdefault(run_seed, {})[column] = reported[column]
        # An ensemble is one model of every seed: one value, no spread over seeds.
        summarized = list(per_seed)[:1] if row["baseline"] == "ensemble" else list(per_seed)
        table[name] = {"method": row["method"], "baseline": row["baseline"],
                       "per_seed": per_seed, "eval_dirs": {s: v[0] for s, v in row["seeds"].items()},
                       "summary": {c: summarize(per_seed[s][c] for s in summarized).as_dict() for c in columns}}  # fmt: skip
    differences = []
    for method in plan.methods:
        for other in rows:
            if other == method.name:
                continue
            for column, higher in columns.items():
                first = [values[(method.name, s, column)][0] for s in plan.reported_seeds]
                second = [values[(other, s, column)][0] for s in plan.reported_seeds]
                statistic = values[(method.name, plan.reported_seeds[0], column)][1]
                result = paired_bootstrap(first, second, statistic, replicates=replicates, seed=seed,
                                          vectorized=statistic is not None)  # fmt: skip
                low, high = result["interval"]
                better = low > 0 if higher else high < 0
                worse = high < 0 if higher else low > 0
                favouring = sum((d > 0) == higher and d != 0 for d in result["per_seed"])
                differences.append({"method": method.name, "against": other, "metric": column,
                                    "higher_is_better": higher, **result, "seeds_favouring_method": favouring,
                                    "verdict": "better" if better else "worse" if worse else "no clear difference"})  # fmt: skip
    return table, differences


def _runs(result: dict, task: str) -> dict:
    return result["tasks"][task]["runs"]


def _label(result: dict, run_dir: str) -> str:
    from .protocol import run_label

    return run_label(result, run_dir)
