"""Selective generation on wordqa over seeds: IVON SFT vs AdamW SFT (MC dropout and temperature samples).

    python scripts/study_selective_generation.py --out results/sft-wordqa-smollm2/study [--seeds 0 1 2] [--samples 10]

For each seed: trains recipes/smollm2/sft-wordqa-{ivon,adamw}.yaml (seed=N), then evaluates on the wordqa test
split with `ivon-lora eval RUN --task wordqa` (IVON with its posterior samples and the AdamW run with MC dropout
side by side; the AdamW run again with temperature-1 samples), and writes study.json / study.md: per run kind and
score, AUROC, PRR, AURC and coverage at 5% risk, mean and std over the seeds, with the accuracies. Steps whose
output already exists are skipped, so an interrupted study resumes. Nothing is tuned: the recipes are the SFT demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"ivon": "recipes/smollm2/sft-wordqa-ivon.yaml", "adamw": "recipes/smollm2/sft-wordqa-adamw.yaml"}
METRICS = ("auroc", "prr", "aurc", "coverage@5%")


def ivon_lora(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ivon_lora", *args], check=True, cwd=ROOT)


def run_seed(out: str, seed: int, samples: int) -> dict:
    runs = {}
    for name, recipe in RECIPES.items():
        runs[name] = os.path.join(out, f"seed{seed}", name)
        if not os.path.isfile(os.path.join(runs[name], "metrics.json")):
            ivon_lora("train", recipe, f"output_dir={runs[name]}", f"seed={seed}", "disable_tqdm=true")
    evals = {"posterior_and_mc_dropout": os.path.join(out, f"seed{seed}", "eval-test"),
             "temperature": os.path.join(out, f"seed{seed}", "eval-test-adamw-temperature")}  # fmt: skip
    common = ["--task", "wordqa", "--split", "test", "--samples", str(samples), "--seed", "0"]
    if not os.path.isfile(os.path.join(evals["posterior_and_mc_dropout"], "eval.json")):
        ivon_lora("eval", runs["ivon"], "--baseline", runs["adamw"], "--mc-dropout-samples", str(samples), *common,
                  "--out", evals["posterior_and_mc_dropout"])  # fmt: skip
    if not os.path.isfile(os.path.join(evals["temperature"], "eval.json")):
        ivon_lora("eval", runs["adamw"], *common, "--out", evals["temperature"])
    result = {}
    for key, directory in evals.items():
        with open(os.path.join(directory, "eval.json")) as f:
            for label, metrics in json.load(f)["tasks"]["wordqa"]["runs"].items():
                kind = "IVON (posterior)" if label == "ivon" else f"AdamW ({key.replace('posterior_and_', '')})"
                result[kind] = metrics
    return result


def summary(per_seed: dict[int, dict]) -> dict:
    kinds = next(iter(per_seed.values())).keys()
    table = {}
    for kind in kinds:
        table[kind] = {"accuracy": [per_seed[s][kind]["accuracy"] for s in per_seed], "scores": {}}
        for score, values in per_seed[next(iter(per_seed))][kind]["scores"].items():
            table[kind]["scores"][score] = {m: [per_seed[s][kind]["scores"][score][m] for s in per_seed]
                                            for m in METRICS}  # fmt: skip
    return table


def mean_std(values: list) -> str:
    from ivon_lora.comparison.stats import mean_std_text

    return mean_std_text(values, 100, 1, undefined="undefined", count_undefined=True)


def markdown(table: dict, seeds: list[int]) -> str:
    lines = [
        f"wordqa test (50 questions), seeds {', '.join(map(str, seeds))}; mean ± std over seeds, x100.",
        "",
        "| run | accuracy | score | AUROC | PRR | AURC | coverage at 5% risk |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, entry in table.items():
        for score, metrics in entry["scores"].items():
            cells = " | ".join(mean_std(metrics[m]) for m in METRICS)
            lines.append(f"| {kind} | {mean_std(entry['accuracy'])} | {score} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=10)
    options = parser.parse_args()
    out = os.path.abspath(options.out)
    per_seed = {seed: run_seed(out, seed, options.samples) for seed in options.seeds}
    table = summary(per_seed)
    with open(os.path.join(out, "study.json"), "w") as f:
        json.dump({"seeds": options.seeds, "samples": options.samples, "recipes": RECIPES, "per_seed": per_seed,
                   "summary": table}, f, indent=1)  # fmt: skip
    with open(os.path.join(out, "study.md"), "w") as f:
        f.write(markdown(table, options.seeds))
    print(markdown(table, options.seeds))


if __name__ == "__main__":
    main()
