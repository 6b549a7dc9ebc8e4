"""What the per-example sensitivity costs: exact and sampled prediction variances against one evaluation pass.

    flock /tmp/ivon-study.lock python scripts/bench_sensitivity.py --run /work/runs/wordfacts-ivon-seed0 \
        --examples 128 --samples 10 --repeats 3 --out results/sensitivity-smollm2/bench.json

On the run's train split (the first --examples), in one process, interleaved per repeat (eval, exact, sampled,
eval, ...) so that a shared CPU slows every side alike:
  eval     `ivon_lora.evaluation.predict.predict` at the posterior mean (num_samples 0): one forward pass per batch;
  exact    `choice_sensitivity(variance="exact")`: a forward pass, then K backward passes per batch;
  sampled  `choice_sensitivity(variance="sampled", num_samples=S)`: S + 1 forward passes per batch.
Reported: seconds per 1,000 examples (median over repeats), the ratios to eval (median of per-repeat ratios), and
how close the sampled estimate is to the exact one (median relative error of v, Spearman of s_i, both LOO-NLLs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ivon_lora.choice import format_examples
    from ivon_lora.evaluation.predict import predict
    from ivon_lora.rundir import environment, load_run
    from ivon_lora.choice.sensitivity import choice_sensitivity
    from ivon_lora.tasks import load_split

    run = load_run(args.run)
    data = run.recipe.data
    examples = format_examples(load_split(data.dataset, data.train_split, limit=args.examples).examples,
                               tokenizer=run.tokenizer, model_args=run.model_args)  # fmt: skip
    common = {"batch_size": args.batch_size, "max_length": getattr(data, "max_length", None)}
    sides = {
        "eval": lambda: predict(run.model, run.tokenizer, examples, posterior=run.posterior, num_samples=0, **common),
        "exact": lambda: choice_sensitivity(run.model, run.tokenizer, examples, run.posterior, "exact", **common),
        "sampled": lambda: choice_sensitivity(run.model, run.tokenizer, examples, run.posterior, "sampled",
                                              num_samples=args.samples, **common),
    }  # fmt: skip
    sides["eval"]()  # warm-up
    times = {name: [] for name in sides}
    outputs = {}
    for _ in range(args.repeats):
        for name, side in sides.items():
            begun = time.perf_counter()
            outputs[name] = side()
            times[name].append(time.perf_counter() - begun)
    # How close the sampled estimate is to the exact one at this S (its accuracy, next to its cost).
    from scipy.stats import spearmanr

    exact, sampled = outputs["exact"], outputs["sampled"]
    present = exact.present
    relative = ((sampled.variance - exact.variance).abs() / exact.variance)[present]
    agreement = {"median_relative_error_of_v": float(relative.median()),
                 "spearman_of_s": float(spearmanr(exact.sensitivity, sampled.sensitivity).statistic),
                 "loo_nll_exact": exact.loo_nll(), "loo_nll_sampled": sampled.loo_nll()}  # fmt: skip
    per_1000 = {name: 1000 * statistics.median(t) / len(examples) for name, t in times.items()}
    ratios = {
        name: statistics.median(t / e for t, e in zip(times[name], times["eval"])) for name in ("exact", "sampled")
    }
    result = {"command": " ".join(["python", "scripts/bench_sensitivity.py", *sys.argv[1:]]), "settings": vars(args),
              "model": run.model_args.model_name_or_path, "num_examples": len(examples),
              "seconds_per_1000_examples": per_1000, "ratio_to_eval": ratios, "times": times,
              "sampled_vs_exact": agreement,
              "environment": environment(), "threads": torch.get_num_threads()}  # fmt: skip
    print(json.dumps({k: result[k] for k in ("model", "num_examples", "seconds_per_1000_examples", "ratio_to_eval",
                                                "sampled_vs_exact")},
                     indent=1))  # fmt: skip
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
