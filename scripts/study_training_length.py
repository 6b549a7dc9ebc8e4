"""Calibration over training length: AdamW (plain, temperature-scaled, early-stopped) against IVON (mean, S samples).

    python scripts/study_training_length.py --out results/training-length-smollm2 [--epochs 30] [--every 3]
        [--seeds 0 1 2] [--noise 0 0.15] [--samples 10] [--candidates 4]

For each label-noise level of the training split (0: clean; 0.15: wordfacts' own noise) and each optimizer:

1. Settings chosen on validation, with the same budget per method (the first `--candidates` configurations of
   the grid below, 4 by default; seed 0, the full run length
   N = epochs x steps per epoch), by the lowest validation NLL of the method's reported predictive at the last
   checkpoint (AdamW: its weights; IVON: the S-sample predictive). The grids, from the recipes' settings and sized
   to N as docs/guides/run-length.md says (IVON's step is lr x clip per entry, so lr scales by
   the recipe's max_steps / N; the Hessian's memory 1/(1 - beta2) is set to about N):
   - AdamW: (lr, weight decay) = (lr0, 0), (lr0 / 3, 0), (3 lr0, 0), (lr0, 0.1);
   - IVON: (lr, ess, beta2) = (lr_N, ess0, b_N), (lr_N / 2, ess0, b_N), (lr_N, 10 ess0, b_N), (lr_N, ess0, b_10N),
     with lr_N = lr0 x max_steps0 / N and b_M = 1 - 1/M.
2. The chosen settings trained with seeds `--seeds` (seed 0 is the selection run itself), a checkpoint every
   `--every` epochs; every checkpoint evaluated on validation and test at the weights / posterior mean and (IVON)
   with S posterior samples. Per AdamW checkpoint, temperature scaling with one T fitted by NLL on validation; per
   IVON checkpoint, the risk-averse selector (kappa chosen on validation). AdamW early-stopped: at each budget, the
   checkpoint so far with the lowest validation NLL.

Writes study.json (every checkpoint's numbers, the curves' mean and std over seeds, the selection with every
candidate's validation NLL, the resolved recipes of the chosen runs, package versions, the command), study.md (the
last budget's table) and training-length.png (test accuracy, NLL and ECE against epochs). Runs go under RUNS/runs
(`--runs`, default OUT), evaluations are cached per checkpoint under RUNS/evals: an interrupted study resumes (a
run with checkpoints but no metrics.json resumes from its last checkpoint). A regime already in OUT/study.json and
not in `--noise` is kept, with the command and versions that produced it, when the rest of the setup is the same
(so the noise levels can be run one invocation at a time; a different setup is refused before any training). Nothing is
chosen on the test split.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECIPES = {"adamw": "recipes/smollm2/wordfacts-adamw.yaml", "ivon": "recipes/smollm2/wordfacts-ivon.yaml"}
SUMMARY = ("accuracy", "nll", "ece_10", "ece_15", "brier")
VARIANTS = ("adamw", "adamw + TS", "adamw early-stopped", "ivon mean", "ivon samples", "ivon samples, risk-averse")
AGGREGATED = (*SUMMARY, "aurc", "coverage@1%", "stopped_at_step", "kappa")


def read_yaml(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def grids(recipes: dict, steps: int) -> dict[str, list[dict]]:
    """The 4 candidate settings per method (see the module doc), as recipe overrides."""
    adamw, ivon = recipes["adamw"], recipes["ivon"]
    lr0, ess0 = float(adamw["learning_rate"]), float(ivon["ivon_ess"])
    lr_n = float(ivon["learning_rate"]) * int(ivon["max_steps"]) / steps
    b_n, b_10n = round(1 - 1 / steps, 6), round(1 - 1 / (10 * steps), 7)
    return {
        "adamw": [{"learning_rate": lr0, "weight_decay": 0.0}, {"learning_rate": lr0 / 3, "weight_decay": 0.0},
                  {"learning_rate": 3 * lr0, "weight_decay": 0.0}, {"learning_rate": lr0, "weight_decay": 0.1}],
        "ivon": [{"learning_rate": lr_n, "ivon_ess": ess0, "ivon_beta2": b_n},
                 {"learning_rate": lr_n / 2, "ivon_ess": ess0, "ivon_beta2": b_n},
                 {"learning_rate": lr_n, "ivon_ess": 10 * ess0, "ivon_beta2": b_n},
                 {"learning_rate": lr_n, "ivon_ess": ess0, "ivon_beta2": b_10n}],
    }  # fmt: skip


def train_file(out: str, task: str, noise: float) -> str:
    """The task's generated train split at this label-noise level, as a jsonl file (validation and test: clean)."""
    from ivon_lora.tasks import get_task

    path = os.path.join(out, "data", f"{task}-train-noise{noise:g}.jsonl")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        records = get_task(task).generator("train", label_noise=noise)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        os.replace(path + ".tmp", path)
    return path


def train(recipe: str, run_dir: str, overrides: dict, options, data_file: str) -> None:
    """Train one run with checkpoints every `options.every` epochs; skipped when done, resumed when interrupted."""
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        return
    args = [f"{key}={value}" for key, value in overrides.items()]
    args += [f"output_dir={run_dir}", f"train_file={data_file}", f"max_steps={options.steps}",
             "save_strategy=steps", f"save_steps={options.save_steps}", "final_eval_samples=0", "disable_tqdm=true",
             *options.train_overrides]  # fmt: skip
    done = checkpoints(run_dir)
    if done:
        args.append(f"resume_from_checkpoint={done[-1][1]}")
    subprocess.run([sys.executable, "-m", "ivon_lora", "train", recipe, *args], check=True, cwd=ROOT)


def checkpoints(run_dir: str) -> list[tuple[int, str]]:
    found = [(int(path.rsplit("-", 1)[1]), path) for path in glob.glob(os.path.join(run_dir, "checkpoint-*"))]
    return sorted(found)


def summary(metrics: dict) -> dict:
    """The summary numbers of one predictive's metrics (no curves)."""
    selective = metrics.get("selective", {})
    return {**{key: metrics[key] for key in SUMMARY if key in metrics}, "aurc": selective.get("aurc"),
            "coverage@1%": selective.get("coverage_at_risk", {}).get("0.01")}  # fmt: skip


def evaluate(checkpoint: str, cache: str, examples: dict, options) -> dict:
    """Every number of one checkpoint on validation and test (cached in `cache`)."""
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    from ivon_lora.fileio import write_json_atomic
    from ivon_lora.choice import format_examples
    from ivon_lora.evaluation.baselines import fit_temperature, temperature_scaled
    from ivon_lora.evaluation.predict import predict
    from ivon_lora.evaluation.risk_averse import risk_averse_report
    from ivon_lora.rundir import load_run

    run = load_run(checkpoint)
    max_length = getattr(run.recipe.data, "max_length", None) if run.recipe else None
    samples = options.samples if run.posterior is not None else 0
    predictions = {
        split: predict(run.model, run.tokenizer, format_examples(part, run.tokenizer, run.model_args),
                       posterior=run.posterior, num_samples=samples, max_length=max_length,
                       batch_size=options.batch_size, seed=0)
        for split, part in examples.items()
    }  # fmt: skip
    result = {}
    for split, prediction in predictions.items():
        metrics = prediction.metrics((10, 15))
        result[split] = {"mean": summary(metrics["mean"])}
        if "sampled" in metrics:
            result[split]["samples"] = summary(metrics["sampled"])
    if run.posterior is None:
        temperature = fit_temperature(predictions["validation"].mean, predictions["validation"].gold)
        result["temperature"] = temperature
        for split, prediction in predictions.items():
            result[split]["ts"] = summary(temperature_scaled(prediction, temperature).metrics((10, 15))["mean"])
    elif samples:
        report = risk_averse_report(predictions["validation"], predictions["test"], "validation")
        result["risk_averse"] = {"kappa": report["kappa"], "test": {"aurc": report["selective"]["aurc"],
                                 "coverage@1%": report["selective"]["coverage_at_risk"]["0.01"]}}  # fmt: skip
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    write_json_atomic(cache, result)
    return result


def run_curve(run_dir: str, key: str, examples: dict, options) -> dict[int, dict]:
    """step -> numbers, for every checkpoint of one run."""
    return {step: evaluate(path, os.path.join(options.runs, "evals", key, f"step{step}.json"), examples, options)
            for step, path in checkpoints(run_dir)}  # fmt: skip


def reported(method: str, numbers: dict, split: str) -> dict:
    return numbers[split]["samples" if method == "ivon" else "mean"]


def select(regime: str, method: str, recipes: dict, candidates: list[dict], examples: dict, options, data_file):
    """Train the candidates (seed 0) and choose by validation NLL at the last checkpoint: (index, table)."""
    table = []
    for index, overrides in enumerate(candidates):
        run_dir = os.path.join(options.runs, "runs", regime, method, f"select{index}")
        train(recipes[method], run_dir, {**overrides, "seed": 0}, options, data_file)
        step, path = checkpoints(run_dir)[-1]
        numbers = evaluate(path, os.path.join(options.runs, "evals", regime, method, f"select{index}",
                                              f"step{step}.json"), examples, options)  # fmt: skip
        table.append({"settings": overrides, "validation_nll": reported(method, numbers, "validation")["nll"],
                      "run_dir": os.path.relpath(run_dir, options.runs)})  # fmt: skip
    chosen = min(range(len(table)), key=lambda i: (table[i]["validation_nll"], i))
    return chosen, table


def variants(method: str, curve: dict[int, dict], split: str) -> dict[str, dict[int, dict]]:
    """variant -> step -> numbers on `split`, for one run's checkpoints."""
    steps = sorted(curve)
    if method == "ivon":
        found = {"ivon mean": {s: curve[s][split]["mean"] for s in steps},
                 "ivon samples": {s: curve[s][split]["samples"] for s in steps}}  # fmt: skip
        if split == "test" and all("risk_averse" in curve[s] for s in steps):  # selective numbers only
            found["ivon samples, risk-averse"] = {
                s: {**curve[s]["risk_averse"]["test"], "kappa": curve[s]["risk_averse"]["kappa"]} for s in steps
            }
        return found
    stopped, best = {}, None
    for s in steps:  # early stopping: the best validation NLL among the checkpoints so far
        if best is None or curve[s]["validation"]["mean"]["nll"] < curve[best]["validation"]["mean"]["nll"]:
            best = s
        stopped[s] = {**curve[best][split]["mean"], "stopped_at_step": best}
    return {"adamw": {s: curve[s][split]["mean"] for s in steps},
            "adamw + TS": {s: curve[s][split]["ts"] for s in steps}, "adamw early-stopped": stopped}  # fmt: skip


def mean_std(values: list) -> dict:
    """The defined values' mean and std (0 for one value; None for none) and their count."""
    from ivon_lora.comparison.stats import summarize

    summary = summarize(values)
    std = summary.std if summary.n != 1 else 0.0
    return {"mean": summary.mean, "std": std, "n": summary.n}


def aggregate(per_seed: dict, steps_per_epoch: int) -> dict:
    """regime -> split -> variant -> [{epoch, metric: {mean, std, n}}] over seeds."""
    curves = {}
    for regime, methods in per_seed.items():
        for split in ("validation", "test"):
            for method, seeds in methods.items():
                by_variant = {}
                for curve in seeds.values():
                    for variant, points in variants(method, curve, split).items():
                        for step, numbers in points.items():
                            by_variant.setdefault(variant, {}).setdefault(step, []).append(numbers)
                for variant, points in by_variant.items():
                    curves.setdefault(regime, {}).setdefault(split, {})[variant] = [
                        {"step": step, "epoch": step / steps_per_epoch,
                         **{key: mean_std([n.get(key) for n in numbers]) for key in AGGREGATED}}
                        for step, numbers in sorted(points.items())
                    ]  # fmt: skip
    return curves


def describe(regime: str) -> str:
    """'clean' or 'noise0.15' (directory names) as a reader says them: 'clean', '15% flipped'."""
    return regime if regime == "clean" else f"{float(regime.removeprefix('noise')):.0%} flipped"


def plot(curves: dict, task: str, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = (("accuracy", "accuracy (%)", 100), ("nll", "NLL", 1), ("ece_10", "ECE, 10 bins (%)", 100))
    regimes = sorted(curves)
    figure = Figure(figsize=(13, 3.8 * len(regimes)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(regimes), 3, squeeze=False)
    for row, regime in enumerate(regimes):
        for col, (key, label, scale) in enumerate(metrics):
            axis = axes[row][col]
            for variant in VARIANTS:
                points = curves[regime]["test"].get(variant)
                if not points or points[0][key]["mean"] is None:
                    continue
                epochs = [p["epoch"] for p in points]
                mean = [scale * p[key]["mean"] for p in points]
                std = [scale * p[key]["std"] for p in points]
                axis.plot(epochs, mean, marker="o", markersize=3, label=variant)
                axis.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                  alpha=0.15)  # fmt: skip
            axis.set_title(f"{describe(regime)} train labels: test {label}", fontsize=9)
            axis.set_xlabel("epochs trained (checkpoints of one run per seed)")
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"SmolLM2-135M-Instruct + LoRA on {task}: mean ± std over seeds (lower is better except accuracy)",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path)


def cell(value: dict, key: str) -> str:
    if value["mean"] is None:
        return "-"
    scale, digits = (1, 3) if key == "nll" else (100, 1)
    return f"{scale * value['mean']:.{digits}f} ± {scale * value['std']:.{digits}f}"


def final_table(curves: dict) -> str:
    lines = [
        "| labels | predictive (test, last budget) | accuracy | NLL | ECE-10 | AURC |",
        "|---|---|---|---|---|---|",
    ]
    for regime in sorted(curves):
        for variant in VARIANTS:
            points = curves[regime]["test"].get(variant)
            if points:
                last = points[-1]
                cells = [cell(last[k], k) for k in ("accuracy", "nll", "ece_10", "aurc")]
                lines.append(f"| {describe(regime)} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# What must match for regimes of two invocations to sit in one study.json.
SETUP = ("task", "recipes", "num_train", "steps_per_epoch", "steps", "checkpoint_every_steps", "seeds", "samples",
         "candidates", "limit", "train_overrides")  # fmt: skip


def earlier_regimes(path: str, setup: dict, regimes: list[str]) -> dict[str, dict]:
    """The regimes of an earlier study.json that this invocation does not rerun (refused if its setup differs)."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        earlier = json.load(f)
    kept = [regime for regime in earlier["checkpoints"] if regime not in regimes]
    if not kept:
        return {}
    for key in SETUP:
        if earlier.get(key) != setup[key]:
            raise SystemExit(
                f"{path}: its {key} is {earlier.get(key)!r}, this invocation's is {setup[key]!r}: regimes "
                f"{', '.join(kept)} cannot be kept; pass another --out or rerun them (--noise)"
            )
    # JSON keys are strings: seeds and steps back to ints.
    return {regime: {
        "selection": earlier["selection"]["regimes"][regime],
        "resolved_recipes": earlier["resolved_recipes"][regime],
        "checkpoints": {method: {int(seed): {int(step): numbers for step, numbers in curve.items()}
                                 for seed, curve in seeds.items()}
                        for method, seeds in earlier["checkpoints"][regime].items()},
        "provenance": earlier.get("provenance", {}).get(
            regime, {"command": earlier["command"], "environment": earlier["environment"]}),
    } for regime in kept}  # fmt: skip


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where study.json, study.md and training-length.png go")
    parser.add_argument("--runs", help="where the runs, data and cached evaluations go (default: OUT)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=3, help="a checkpoint every this many epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.15], help="train label-noise levels")
    parser.add_argument("--samples", type=int, default=10, help="IVON posterior samples S")
    parser.add_argument("--candidates", type=int, default=4, choices=range(1, 5), metavar="K",
                        help="choose among the first K settings of each method's grid (1-4)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    parser.add_argument("--adamw-recipe", default=RECIPES["adamw"])
    parser.add_argument("--ivon-recipe", default=RECIPES["ivon"])
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions of validation and test")
    parser.add_argument(
        "--train-override",
        dest="train_overrides",
        nargs="*",
        default=[],
        help="extra key=value for every training run (e.g. max_train_samples=64 for a dry run)",
    )
    options = parser.parse_args(argv)
    options.runs = options.runs or options.out
    if 0 not in options.seeds:
        parser.error("--seeds must include 0: the selection runs are seed 0")
    return options


def main(argv=None) -> dict:
    options = parse_options(argv)
    from ivon_lora.fileio import write_json_atomic
    from ivon_lora.rundir import environment
    from ivon_lora.tasks import load_split

    recipes = {"adamw": read_yaml(os.path.join(ROOT, options.adamw_recipe)),
               "ivon": read_yaml(os.path.join(ROOT, options.ivon_recipe))}  # fmt: skip
    paths = {"adamw": options.adamw_recipe, "ivon": options.ivon_recipe}
    task = recipes["ivon"]["dataset"]
    overrides = dict(item.split("=", 1) for item in options.train_overrides)
    num_train = len(load_split(task, "train").examples)
    if "max_train_samples" in overrides:
        num_train = min(num_train, int(overrides["max_train_samples"]))
    batch = int(recipes["ivon"]["per_device_train_batch_size"]) * int(
        recipes["ivon"].get("gradient_accumulation_steps", 1)
    )
    steps_per_epoch = math.ceil(num_train / batch)
    options.steps, options.save_steps = options.epochs * steps_per_epoch, options.every * steps_per_epoch
    examples = {split: load_split(task, split, limit=options.limit).examples for split in ("validation", "test")}
    candidates = {method: grid[: options.candidates] for method, grid in grids(recipes, options.steps).items()}
    command = " ".join(["python", "scripts/study_training_length.py", *(sys.argv[1:] if argv is None else argv)])
    setup = {"task": task, "recipes": paths, "num_train": num_train, "steps_per_epoch": steps_per_epoch,
             "steps": options.steps, "checkpoint_every_steps": options.save_steps, "seeds": options.seeds,
             "samples": options.samples, "candidates": options.candidates, "limit": options.limit,
             "train_overrides": options.train_overrides}  # fmt: skip
    regimes = {noise: "clean" if noise == 0 else f"noise{noise:g}" for noise in options.noise}  # also directory names
    earlier = earlier_regimes(os.path.join(options.out, "study.json"), setup, list(regimes.values()))
    selection = {regime: kept["selection"] for regime, kept in earlier.items()}
    per_seed = {regime: kept["checkpoints"] for regime, kept in earlier.items()}
    resolved = {regime: kept["resolved_recipes"] for regime, kept in earlier.items()}
    provenance = {regime: kept["provenance"] for regime, kept in earlier.items()}
    for noise, regime in regimes.items():
        data_file = train_file(options.runs, task, noise)
        for method in ("adamw", "ivon"):
            chosen, table = select(regime, method, paths, candidates[method], examples, options, data_file)
            selection.setdefault(regime, {})[method] = {"chosen": chosen, "candidates": table}
            seeds = {}
            for seed in options.seeds:
                run_dir = os.path.join(options.runs, "runs", regime, method,
                                       f"select{chosen}" if seed == 0 else f"seed{seed}")  # fmt: skip
                train(paths[method], run_dir, {**candidates[method][chosen], "seed": seed}, options, data_file)
                key = os.path.join(regime, method, os.path.basename(run_dir))
                seeds[seed] = run_curve(run_dir, key, examples, options)
                resolved.setdefault(regime, {}).setdefault(method, {})[seed] = read_yaml(
                    os.path.join(run_dir, "recipe.yaml")
                )
            per_seed.setdefault(regime, {})[method] = seeds
        provenance[regime] = {"command": command, "environment": environment()}
    curves = aggregate(per_seed, steps_per_epoch)
    study = {
        "command": command, **setup,
        "selection": {"criterion": "lowest validation NLL of the reported predictive (AdamW: weights; IVON: S "
                                   f"samples) at the last checkpoint, seed 0; {options.candidates} candidates per "
                                   "method",
                      "regimes": selection},
        "resolved_recipes": resolved, "checkpoints": per_seed, "curves": curves, "environment": environment(),
        "provenance": provenance,  # per regime: the command and versions that produced it
    }  # fmt: skip
    os.makedirs(options.out, exist_ok=True)
    write_json_atomic(os.path.join(options.out, "study.json"), study)
    with open(os.path.join(options.out, "study.md"), "w") as f:
        f.write(final_table(curves))
    plot(curves, task, os.path.join(options.out, "training-length.png"))
    print(final_table(curves))
    return study


if __name__ == "__main__":
    main()
