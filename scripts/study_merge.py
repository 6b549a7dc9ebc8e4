"""Merging a wordfacts adapter and an antonyms adapter of SmolLM2-135M-Instruct: single adapters, average, task
arithmetic, TIES, DARE-TIES, `uncertainty` and `posterior`, IVON and AdamW, against a multitask finetune.

    flock /tmp/ivon-study.lock python scripts/study_merge.py --seeds 0 1 2

Runs (trained when missing, each skipped once its metrics.json exists; resumable: every scored point is saved):
    wordfacts  /work/runs/wordfacts-{ivon,adamw}-seed{N}        recipes/smollm2/wordfacts-{ivon,adamw}.yaml seed=N
    antonyms   /work/runs/merge/antonyms-{ivon,adamw}-seed{N}   recipes/smollm2/antonyms-{ivon,adamw}.yaml seed=N
    multitask  /work/runs/merge/wordfacts_antonyms-{opt}-seed0  recipes/smollm2/wordfacts_antonyms-{opt}.yaml
Every merge is scored at its weights (no samples) on both tasks' validation splits; each method's α (and density,
base precision) is chosen by the mean validation accuracy of the two tasks (ties: lower mean NLL), and only the
chosen merge is scored on test. All merges run in ΔW space and return to rank 16 (the sum of the two ranks), except
the rows marked "factor", which merge A and B separately (the LoRA design comparison). Writes
results/merge-smollm2/study.json (every point, resolved recipes, versions), study.md and study.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TASKS = ("wordfacts", "antonyms")
DESIGN_COLUMNS = ("linear (PEFT, factor-wise)", "cat (exact ΔW)", "uncertainty factor, H₀=0", "uncertainty delta, H₀=0")
ALPHAS = (0.5, 1.0, 1.5)
DENSITIES = (0.3, 0.7)
# --search random (issue 33's protocol): every method gets the same number of validation candidates, each task's
# weight α drawn log-uniform (unequal weights for every method; the same draws for every method) and the method's own
# setting drawn from its range; "average" stays the one fixed reference. The rank-32 rows control the truncation back
# to rank 16 (the sum of the two ranks) that TIES and the ΔW-space uncertainty merge make.
CANDIDATES = 12
WEIGHT_RANGE = (0.25, 2.0)
SEARCH = {  # row -> (merge spec, its own setting (key, low, high, log scale?) or None)
    "task arithmetic": ({"method": "cat"}, None),
    "TIES": ({"method": "ties_svd", "rank": 16}, ("density", 0.1, 0.9, False)),
    "TIES, rank 32": ({"method": "ties_svd", "rank": 32}, ("density", 0.1, 0.9, False)),
    "DARE-TIES": ({"method": "dare_ties_svd", "rank": 16}, ("density", 0.1, 0.9, False)),
    "linear (factor)": ({"method": "linear"}, None),
}
IVON_SEARCH = {  # H₀, the base model's precision per entry, a scalar on a log range (its curvature is not measured)
    "uncertainty": ({"method": "uncertainty"}, ("base_precision", 1.0, 1e6, True)),
    "uncertainty, rank 32": ({"method": "uncertainty", "rank": 32}, ("base_precision", 1.0, 1e6, True)),
    "posterior": ({"method": "posterior"}, None),
    "uncertainty (factor)": ({"method": "uncertainty", "space": "factor"}, ("base_precision", 1.0, 1e6, True)),
    "posterior (factor)": ({"method": "posterior", "space": "factor"}, None),
}


def random_search(optimizer: str, seed: int, candidates: int = CANDIDATES) -> list[tuple[str, dict, list]]:
    """(row name, merge spec, [weights]) rows: `candidates` per method, from generators seeded by `seed` (the weights,
    shared by every method) and by (seed, method) (its own setting), so that adding a method moves no other."""
    import math
    import random

    def log_uniform(rng, low, high):
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    shared = random.Random(f"weights-{seed}")
    weights = [tuple(round(log_uniform(shared, *WEIGHT_RANGE), 4) for _ in TASKS) for _ in range(candidates)]
    rows = [("average", {"method": "cat"}, [(0.5, 0.5)])]
    for name, (spec, setting) in {**SEARCH, **(IVON_SEARCH if optimizer == "ivon" else {})}.items():
        own = random.Random(f"{name}-{seed}")
        for pair in weights:
            drawn = dict(spec)
            if setting is not None:
                key, low, high, log = setting
                drawn[key] = round(log_uniform(own, low, high) if log else own.uniform(low, high), 4)
            rows.append((name, drawn, [pair]))
    return rows


# (row name, merge spec, weight points): the validation grid of every method; "average" has no hyperparameter.
def grid(optimizer: str) -> list[tuple[str, dict, list]]:
    same = lambda alphas: [(a, a) for a in alphas]  # noqa: E731  equal weights, as the ICLR paper's α
    rows = [("average", {"method": "cat"}, [(0.5, 0.5)]), ("task arithmetic", {"method": "cat"}, same(ALPHAS))]
    for density in DENSITIES:
        rows += [
            ("TIES", {"method": "ties_svd", "density": density, "rank": 16}, same(ALPHAS[:2])),
            ("DARE-TIES", {"method": "dare_ties_svd", "density": density, "rank": 16}, same(ALPHAS[:2])),
        ]
    rows.append(("linear (factor)", {"method": "linear"}, [(1.0, 1.0)]))
    if optimizer == "ivon":
        rows += [
            ("uncertainty", {"method": "uncertainty", "base_precision": 0.0}, [(1.0, 1.0)]),
            ("uncertainty", {"method": "uncertainty", "base_precision": 1.0}, same(ALPHAS)),
            ("posterior", {"method": "posterior"}, [(1.0, 1.0)]),
            ("uncertainty (factor)", {"method": "uncertainty", "space": "factor"}, [(1.0, 1.0)]),
            ("posterior (factor)", {"method": "posterior", "space": "factor"}, [(1.0, 1.0)]),
        ]
    return rows  # fmt: skip


def run_dirs(seed: int, optimizer: str, runs: str) -> dict[str, str]:
    return {"wordfacts": f"/work/runs/wordfacts-{optimizer}-seed{seed}",
            "antonyms": os.path.join(runs, f"antonyms-{optimizer}-seed{seed}")}  # fmt: skip


def train(recipe: str, seed: int, out: str) -> None:
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return
    command = [sys.executable, "-m", "ivon_lora", "train", os.path.join(ROOT, "recipes", "smollm2", f"{recipe}.yaml"),
               f"seed={seed}", f"output_dir={out}", "overwrite_output_dir=true", "final_eval_samples=0"]  # fmt: skip
    print("training:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def lora_design(first: str, second: str) -> dict:
    """How far each merge's ΔW lies from the exact ΔW average 0.5·(ΔW₁ + ΔW₂) (relative Frobenius distance over all
    adapted matrices), and how aligned the two runs' A factors are (cosine): factor-wise merges add the cross terms
    B₁A₂ + B₂A₁, which are noise unless the runs share A's basis. No model needed."""
    import torch

    from ivon_lora.merging.peft_types import factor_keys, module_paths
    from ivon_lora.merging.runs import merge_adapters, read_input

    inputs = [read_input(first), read_input(second)]
    paths = module_paths(inputs[0].tensors)

    def delta(tensors, config, path):
        a, b = factor_keys(path)
        return config["lora_alpha"] / config["r"] * tensors[b].double() @ tensors[a].double()

    exact = {p: sum(0.5 * delta(run.tensors, run.config, p) for run in inputs) for p in paths}
    norm = sum(float(exact[p].norm() ** 2) for p in paths) ** 0.5
    flat = [torch.cat([run.tensors[factor_keys(p)[0]].flatten() for p in paths]) for run in inputs]
    result = {"runs": [first, second], "cosine_A": float(torch.nn.functional.cosine_similarity(*flat, dim=0))}
    methods = [("linear (PEFT, factor-wise)", "linear", {}), ("cat (exact ΔW)", "cat", {})]
    if all(run.variance is not None for run in inputs):
        methods += [("uncertainty factor, H₀=0", "uncertainty", {"space": "factor"}),
                    ("uncertainty delta, H₀=0", "uncertainty", {"space": "delta"})]  # fmt: skip
    for name, method, settings in methods:
        tensors, config, _ = merge_adapters(inputs, method, [0.5, 0.5], **settings)
        distance = sum(float((delta(tensors, config, p) - exact[p]).norm() ** 2) for p in paths) ** 0.5 / norm
        result[name] = distance
    return result


def mean_score(scores: dict, column: str) -> float:
    return statistics.fmean(scores[f"{task}/validation"][column] for task in TASKS)


def refined(run_dir: str, grid: dict) -> str:
    """The run's learned posterior: `ivon-lora refine` (the exact GGN at its mean, the scale chosen on its task's
    validation split among `grid`), written once beside the run."""
    out = f"{run_dir}-refined"
    if not os.path.isfile(os.path.join(out, "posterior_config.json")):
        command = [sys.executable, "-m", "ivon_lora", "refine", run_dir, "--ess", *map(str, grid["ess"]),
                   "--prior-precision", *map(str, grid["prior_precision"]), "--select-samples", "10", "--out", out,
                   "--overwrite"]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
    return out


def study_seed(seed: int, optimizer: str, dirs: dict, state: dict, save, reference: str | None,
               search: str = "grid") -> None:  # fmt: skip
    from ivon_lora.merging.runs import read_input
    from ivon_lora.merging.sweep import AdapterScorer, method_label, sweep_merges
    from ivon_lora.tasks import load_split

    inputs = [read_input(dirs[task]) for task in TASKS]
    splits = {f"{task}/{split}": load_split(task, split) for task in TASKS for split in ("validation", "test")}
    scorer = AdapterScorer(dirs["wordfacts"], splits)
    validation = [name for name in splits if name.endswith("validation")]
    test = [name for name in splits if name.endswith("test")]
    done = state.setdefault("points", {}).setdefault(f"{optimizer}-seed{seed}", {})
    original = scorer.score

    def score_validation(tensors, config, names=None):
        return original(tensors, config, names=validation)

    scorer.score = score_validation
    chosen = state.setdefault("chosen", {}).setdefault(f"{optimizer}-seed{seed}", {})
    for name, spec, points in grid(optimizer) if search == "grid" else random_search(optimizer, seed):
        spec = {"space": "delta", "density": None, "rank": None, "base_precision": 0.0, "seed": seed, **spec}
        rows = sweep_merges(inputs, [spec], points, scorer, score_inputs=False, done=done,
                            on_row=lambda row: (done.__setitem__(row["key"], row), save()))  # fmt: skip
        for row in rows:
            row["name"] = name
            best = chosen.get(name)
            key = (mean_score(row["scores"], "accuracy"), -mean_score(row["scores"], "nll"))
            if best is None or key > (best["validation_accuracy"], -best["validation_nll"]):
                chosen[name] = {"key": row["key"], "spec": spec, "weights": row["weights"], "label": method_label(spec),
                                "validation_accuracy": key[0], "validation_nll": -key[1]}  # fmt: skip
    scorer.score = original
    tests = state.setdefault("test", {}).setdefault(f"{optimizer}-seed{seed}", {})
    singles = {f"{task} adapter": (run.tensors, run.config) for task, run in zip(TASKS, inputs)}
    if reference:
        multitask = read_input(reference)
        singles["multitask finetune"] = (multitask.tensors, multitask.config)
    for name, (tensors, config) in singles.items():
        if name not in tests:
            tests[name] = {"scores": scorer.score(tensors, config, names=[*test, *validation], per_example=True)}
            save()
    from ivon_lora.merging.runs import merge_adapters

    for name, pick in chosen.items():
        if tests.get(name, {}).get("key") == pick["key"]:
            continue
        start = time.perf_counter()
        tensors, config, _ = merge_adapters(inputs, weights=list(pick["weights"]), **pick["spec"])
        seconds = time.perf_counter() - start
        tests[name] = {"key": pick["key"], "label": pick["label"], "weights": pick["weights"], "merge_seconds": seconds,
                       "scores": scorer.score(tensors, config, names=test, per_example=True)}  # fmt: skip
        save()
        print(f"{optimizer} seed {seed} {name}: {pick['label']} {pick['weights']} ->",
              {k: round(v["accuracy"], 3) for k, v in tests[name]["scores"].items()}, flush=True)  # fmt: skip
    del scorer


PAIRED_AGAINST = "task arithmetic"  # the merge every other is paired against (the ICLR paper's baseline)


def paired_lines(state: dict) -> list[str]:
    """Each method's test accuracy minus PAIRED_AGAINST's, per task: the mean over the seeds both have of each seed's
    difference, with its 95% paired-bootstrap interval over the test examples (the compare protocol's); only for
    the points scored with their per-example hits."""
    from ivon_lora.comparison.stats import interval_text, paired_bootstrap

    def has_hits(seed: str, name: str) -> bool:
        return "correct" in state["test"][seed].get(name, {}).get("scores", {}).get(f"{TASKS[0]}/test", {})

    lines = []
    for optimizer in ("ivon", "adamw"):
        seeds = [key for key in state.get("test", {}) if key.startswith(f"{optimizer}-")]
        paired_seeds = [s for s in seeds if has_hits(s, PAIRED_AGAINST)]
        if not paired_seeds:
            continue
        lines += ["", f"**{optimizer.upper()}**: test accuracy minus {PAIRED_AGAINST}'s (x100; 95% paired-bootstrap "
                  "interval over the test examples; seeds: how many the pair shares):", "",
                  "| method | seeds | " + " | ".join(f"{task} acc" for task in TASKS) + " |",
                  "|---|---|" + "---|" * len(TASKS)]  # fmt: skip
        for name in state["test"][paired_seeds[0]]:
            if name == PAIRED_AGAINST:
                continue
            both = [s for s in paired_seeds if has_hits(s, name)]
            cells = []
            for task in TASKS:
                split = f"{task}/test"
                found = paired_bootstrap(
                    [state["test"][s][name]["scores"][split]["correct"] for s in both],
                    [state["test"][s][PAIRED_AGAINST]["scores"][split]["correct"] for s in both],
                )
                cells.append(interval_text(found["difference"], found["interval"], 100.0, 1, signed=True))
            lines.append(f"| {name} | {len(both)} | " + " | ".join(cells) + " |")
    return lines


def table(state: dict) -> str:
    """Test accuracy / NLL / ECE per task, mean ± std over the seeds studied, per optimizer and method, and the paired
    differences against PAIRED_AGAINST where the per-example hits were kept."""
    from ivon_lora.comparison.stats import mean_std_text

    lines = [
        "LoRA design: relative distance of each merge's ΔW to the exact ΔW average (cosine of the runs' A):\n",
        "| pair | cos(A₁, A₂) | " + " | ".join(DESIGN_COLUMNS) + " |",
        "|---|---|" + "---|" * len(DESIGN_COLUMNS),
    ]
    for label, row in state.get("lora_design", {}).items():
        lines.append(
            f"| {label} | {row['cosine_A']:.3f} | "
            + " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in DESIGN_COLUMNS)
            + " |"
        )
    for optimizer in ("ivon", "adamw"):
        seeds = sorted(k for k in state.get("test", {}) if k.startswith(optimizer + "-"))
        if not seeds:
            continue
        lines += [f"\n**{optimizer.upper()}** adapters, test split, mean ± std over {len(seeds)} seed(s) "
                  f"({', '.join(s.split('-')[1] for s in seeds)}); hyperparameters chosen on validation:\n",
                  "| method | chosen (seed 0) | wordfacts acc | wordfacts NLL | wordfacts ECE | antonyms acc | "
                  "antonyms NLL | antonyms ECE | mean acc |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        names = list(state["test"][seeds[0]])
        for name in names:
            values = [state["test"][s][name] for s in seeds if name in state["test"][s]]

            def cell(task, column, values=values):
                return mean_std_text([v["scores"][f"{task}/test"][column] for v in values], digits=3)

            means = [statistics.fmean(v["scores"][f"{t}/test"]["accuracy"] for t in TASKS) for v in values]
            chosen = values[0].get("label", "") + (f" α={values[0]['weights']}" if "weights" in values[0] else "")
            lines.append(f"| {name} | {chosen} | " + " | ".join(cell(t, c) for t in TASKS for c in ("accuracy", "nll", "ece_10"))
                         + f" | {statistics.fmean(means):.3f} |")  # fmt: skip
    return "\n".join(lines + paired_lines(state))


def figure(state: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=120)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    curves = {}  # (optimizer, label) -> α -> mean validation accuracy per seed
    for key, points in state.get("points", {}).items():
        optimizer, seed = key.split("-")
        by_label = {}
        for row in points.values():
            by_label.setdefault(row["label"], []).append(row)
        for label, rows in by_label.items():
            for row in rows:
                if row["weights"][0] == row["weights"][1]:
                    curve = curves.setdefault((optimizer, label), {})
                    curve.setdefault(row["weights"][0], []).append(mean_score(row["scores"], "accuracy"))
            if seed != "seed0":
                continue
            left.scatter([r["scores"]["wordfacts/validation"]["accuracy"] for r in rows],
                         [r["scores"]["antonyms/validation"]["accuracy"] for r in rows],
                         marker="o" if optimizer == "ivon" else "x", s=18, label=f"{optimizer}: {label}")  # fmt: skip
        if seed != "seed0":
            continue
        tests = state.get("test", {}).get(key, {})
        for name, style in (("wordfacts adapter", "s"), ("antonyms adapter", "D"), ("multitask finetune", "*")):
            if name in tests:
                scores = tests[name]["scores"]
                left.scatter(scores["wordfacts/validation"]["accuracy"], scores["antonyms/validation"]["accuracy"],
                             marker=style, s=120, color="black" if optimizer == "ivon" else "gray",
                             label=f"{optimizer}: {name}")  # fmt: skip
    for (optimizer, label), by_alpha in sorted(curves.items()):
        alphas = sorted(by_alpha)
        if len(alphas) < 3:
            continue
        seeds = len(by_alpha[alphas[0]])
        (line,) = right.plot(alphas, [statistics.fmean(by_alpha[a]) for a in alphas], linewidth=2.5,
                             marker="o" if optimizer == "ivon" else "x", label=f"{optimizer}: {label}, mean")  # fmt: skip
        for seed in range(seeds):  # thin lines: one per seed, so the spread between seeds stays visible
            right.plot(alphas, [by_alpha[a][seed] for a in alphas], color=line.get_color(), linewidth=0.7, alpha=0.5)
    left.set(xlabel="wordfacts validation accuracy", ylabel="antonyms validation accuracy",
             title="Every merge of the validation grid (seed 0; o IVON, x AdamW)")  # fmt: skip
    right.set(xlabel="α (the same weight on both tasks)", ylabel="mean validation accuracy of the two tasks",
              title="α-robustness (thick: mean of the seeds; thin: each seed)")  # fmt: skip
    left.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, markerscale=0.6)
    right.legend(fontsize=7, loc="lower left")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["ivon", "adamw"])
    parser.add_argument("--runs", default="/work/runs/merge")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "merge-smollm2"))
    parser.add_argument(
        "--reference-optimizers",
        nargs="+",
        default=["ivon"],
        help="optimizers whose multitask finetune (seed 0) is trained as the reference",
    )
    parser.add_argument("--no-train", action="store_true", help="skip seeds whose runs are missing instead of training")
    parser.add_argument(
        "--posterior",
        choices=["trained", "learned"],
        default="trained",
        help="the IVON runs' posterior as trained, or refined (study_curvature.REFINE_GRID; issue 33)",
    )
    parser.add_argument("--search", choices=["grid", "random"], default="grid",
                        help="grid: the committed study's per-method grids; random: CANDIDATES per method, unequal "
                             "weights for every method, the rank-32 controls (issue 33)")  # fmt: skip
    options = parser.parse_args()
    from ivon_lora.fileio import write_json_atomic
    from ivon_lora.config import read_yaml
    from ivon_lora.rundir import environment

    os.makedirs(options.out, exist_ok=True)
    path = os.path.join(options.out, "study.json")
    state = json.load(open(path)) if os.path.isfile(path) else {}
    state.update(command=" ".join(["python", "scripts/study_merge.py", *sys.argv[1:]]), environment=environment(),
                 protocol="adapters at their weights (no samples); α, density, base precision chosen by mean "
                          "validation accuracy of both tasks; reported on test; ECE with 10 bins")  # fmt: skip

    def save():
        write_json_atomic(path, state)

    for optimizer in options.optimizers:
        reference = os.path.join(options.runs, f"wordfacts_antonyms-{optimizer}-seed0")
        for seed in options.seeds:
            dirs = run_dirs(seed, optimizer, options.runs)
            if not options.no_train:
                train(f"antonyms-{optimizer}", seed, dirs["antonyms"])
                if seed == options.seeds[0] and optimizer in options.reference_optimizers:
                    train(f"wordfacts_antonyms-{optimizer}", 0, reference)
            if not all(os.path.isfile(os.path.join(d, "metrics.json")) for d in dirs.values()):
                print(f"skipping {optimizer} seed {seed}: runs missing ({dirs})", flush=True)
                continue
            design = state.setdefault("lora_design", {})
            for label, pair in (
                (f"{optimizer} seed {seed}: wordfacts vs antonyms", list(dirs.values())),
                (
                    f"{optimizer}: wordfacts seed 0 vs seed 1",
                    [run_dirs(s, optimizer, options.runs)["wordfacts"] for s in (0, 1)],
                ),
            ):
                if label not in design and all(os.path.isfile(os.path.join(d, "metrics.json")) for d in pair):
                    design[label] = lora_design(*pair)
                    save()
            has_reference = os.path.isfile(os.path.join(reference, "metrics.json"))
            state.setdefault("recipes", {})
            for directory in [*dirs.values(), *([reference] if has_reference else [])]:
                state["recipes"][directory] = read_yaml(os.path.join(directory, "recipe.yaml"))
            if options.posterior == "learned" and optimizer == "ivon":
                from study_curvature import REFINE_GRID  # the grid the curvature study settled on (scripts/)

                dirs = {task: refined(directory, REFINE_GRID) for task, directory in dirs.items()}
            study_seed(seed, optimizer, dirs, state, save, reference if has_reference else None,
                       options.search)  # fmt: skip
            save()
    with open(os.path.join(options.out, "study.md"), "w") as f:
        f.write(f"Command: `flock /tmp/ivon-study.lock {state['command']}`\n{table(state)}\n")
    figure(state, os.path.join(options.out, "study.png"))
    print(table(state))


if __name__ == "__main__":
    main()
