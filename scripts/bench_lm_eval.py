"""Cost of the lm-eval backend with S posterior samples against S plain lm-eval `hf` runs, one per sample.

    python scripts/bench_lm_eval.py --model qwen2.5-0.5b --samples 10 --threads 2 --out bench_lm_eval.json

Same scaled random model, adapter and synthetic posterior as `bench_eval.py` (see there), and lm-eval
loglikelihood requests shaped like a multiple-choice task: --examples prompts of --prompt-tokens words, each
with K = 4 continuations of --answer-tokens words.

Timed (interleaved, one untimed warm-up each, medians of paired per-repeat ratios):
  ours   `IVONLoRALM(run, samples=S).loglikelihood(requests)`: each batch scored under each of the S samples
         (one bound sampler), per-sample sums combined by log-mean-exp, is_greedy from the averaged distributions;
  plain  S runs of lm-eval's `HFLM.loglikelihood(requests)`, the model holding posterior sample s in run s (the
         same samples), then the log-mean-exp of the S values per request by hand; no averaged-distribution
         is_greedy (it would need every run's full next-token distributions kept).
Both give the same log-likelihoods (checked to 1e-4) or the script fails. The ratio ours / plain is the cost of
the backend relative to the S forward passes that any S-sample evaluation needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import REAL_MODELS, build, interleaved, paired_ratio  # noqa: E402

from ivon_lora.config import ModelArguments  # noqa: E402
from ivon_lora.integrations.lm_eval import IVONLoRALM, log_mean_exp  # noqa: E402
from ivon_lora.rundir import Run, environment  # noqa: E402


def requests_like_multiple_choice(examples, answer_tokens: int, vocab_words: int, seed: int):
    from lm_eval.api.instance import Instance

    generator = torch.Generator().manual_seed(seed)
    instances = []
    for example in examples:
        for _ in range(4):
            words = torch.randint(vocab_words, (answer_tokens,), generator=generator).tolist()
            continuation = "".join(f" w{w}" for w in words)
            instances.append(Instance("loglikelihood", {}, (example.prompt, continuation), len(instances)))
    return instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(REAL_MODELS), default="qwen2.5-0.5b")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python scripts/bench_lm_eval.py " + shlex.join(sys.argv[1:])
    print(command)
    device = torch.device(args.device)

    shape, model, tokenizer, examples, posterior = build(args)
    posterior.apply_mean(model)
    tokenizer.padding_side = "left"
    requests = requests_like_multiple_choice(examples, args.answer_tokens, shape.vocab_size - 6, args.seed)
    run = Run("scaled", model, tokenizer, posterior, None, ModelArguments(model_name_or_path="scaled"))
    ours = IVONLoRALM(run, samples=args.samples, seed=args.seed, batch_size=args.batch_size, device=args.device)
    from lm_eval.models.huggingface import HFLM

    plain = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=args.batch_size)

    def run_ours():
        return [value for value, _ in ours.loglikelihood(requests, disable_tqdm=True)]

    def run_plain():
        sampler = posterior.sampler(model, seed=args.seed)
        per_sample = []
        for _ in range(args.samples):
            with sampler.sample():
                per_sample.append([value for value, _ in plain.loglikelihood(requests, disable_tqdm=True)])
        return log_mean_exp(torch.tensor(per_sample, dtype=torch.float64)).tolist()

    difference = max(abs(a - b) for a, b in zip(run_ours(), run_plain()))
    if difference > 1e-4:
        raise SystemExit(f"the backend and S plain runs disagree: max |difference| {difference:.2e}")
    times = interleaved({"ours": run_ours, "plain": run_plain}, args.repeats, device)
    ratio = paired_ratio(times, "ours", "plain")
    result = {
        "command": command,
        "shape": shape.__dict__,
        "requests": len(requests),
        "samples": args.samples,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "seconds": times,
        "ratio_ours_over_plain": ratio,
        "max_abs_difference": difference,
        "environment": environment(),
    }
    print(f"{len(requests)} requests ({args.examples} prompts x 4 continuations of {args.answer_tokens} tokens), "
          f"S = {args.samples}, {torch.get_num_threads()} threads; log-likelihoods agree to {difference:.1e}")  # fmt: skip
    for name in times:
        print(f"  {name:5s} {sorted(times[name])[len(times[name]) // 2]:.3f} s (median)")
    print(f"  ours / {args.samples} plain HFLM runs: {ratio:.3f}x (median of paired ratios)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
