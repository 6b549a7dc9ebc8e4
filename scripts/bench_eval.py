"""Evaluation speed with S posterior samples: ivon-lora's path against the naive one, same model, data and noise.

    python scripts/bench_eval.py --model qwen2.5-0.5b --threads 2
    python scripts/bench_eval.py --model llama-3.2-1b --threads 2 --batched

The model is a randomly initialised Qwen2 / Llama with a real model's proportions scaled down together: the
vocabulary / (layers x hidden) ratio, the MLP width / hidden ratio and the query/key-value head ratio of
Qwen2.5-0.5B (151936 / (24 x 896) = 7.07) or Llama-3.2-1B (128256 / (16 x 2048) = 3.91), with tied embeddings,
a LoRA adapter (r 8, alpha 16, q_proj and v_proj) and a synthetic posterior. Prompts are --prompt-tokens words
of a word-level tokenizer over the whole vocabulary (so no padding), followed by K = 4 one-token answers.

Measured (both sides score every example at the posterior mean and under S samples, the same S noise draws,
tokenization included):
  ours   `ivon_lora.evaluation.predict.evaluate_predictive`: `choice_logits` (LM head at the last position only,
         `logits_to_keep=1`) under `Posterior.sample`, i.e. exactly what `ivon-lora eval` runs;
  naive  the peers' way: `model(input_ids, attention_mask).logits` (B x T x V), then the last position gathered
         at the answer ids, under the same samples.
The metrics of both must agree (accuracy, NLL, Brier, ECE at the mean and for 1..S samples) or the script fails.
Times are interleaved (ours, naive, ours, naive, ... in one process) and the ratio is the median of the paired
per-repeat ratios, so a shared CPU slows both sides alike.

Physical ratio (FLOPs per example of T tokens; L layers, hidden H, vocabulary V, K answers, P_body = parameters
of the decoder layers including LoRA, H_attn = heads x head dim; a causal attention computes half of the T x T
scores and weighted values):
    body  = 2 * P_body * T  +  2 * L * T^2 * H_attn
    naive = body + 2 * V * H * T          (full-vocabulary head at every position)
    ideal = body + 2 * K * H              (K answer rows of the head at the last position)
    physical ratio = naive / ideal
(`logits_to_keep=1` computes all V rows at the last position, body + 2 * V * H: also printed, it differs from
the ideal by well under 1% at T = 100.) Norms, rotary embeddings, activations and the attention kernel's own
inefficiency are not in the FLOPs; they scale with H, not H^2, so a scaled-down model spends relatively more in them
than the real one. Profiled on 2 CPU cores at hidden 128: GEMMs are ~60% of our forward, CPU flash attention ~15-20%
(at a fraction of the GEMMs' FLOP rate), element-wise ops ~15%; the naive side's extra time is the head GEMM, at the
body GEMMs' rate. So the measured ratio can fall a few % short of the FLOP ratio, more so at smaller --hidden.

Also measured: the cost of drawing and applying one posterior sample (sampler cached vs `Posterior.sample`, which
binds afresh) as a % of one forward pass of a batch, and with --batched, S samples in one batched forward pass
(`ivon_lora.evaluation.batched`) against S sequential passes; on a CPU it is not expected to be faster.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ivon_lora.evaluation.batched import predict_sampled_probs
from ivon_lora.evaluation.metrics import calibration_metrics
from ivon_lora.evaluation.predict import evaluate_predictive
from ivon_lora.modeling import apply_lora
from ivon_lora.choice import ChoiceCollator, ChoiceExample, choice_logits
from ivon_lora.posterior import Posterior, adapter_parameters
from ivon_lora.config import ModelArguments

ECE_BINS = (10, 15)
ANSWERS = (" A", " B", " C", " D")


@dataclass(frozen=True)
class Proportions:
    """The shape of a Qwen2 / Llama model."""

    architecture: str
    vocab_size: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int

    def scaled(self, hidden_size: int, num_layers: int, head_dim: int) -> Proportions:
        """Same vocab / (layers x hidden), MLP / hidden and query / key-value head ratios, at a smaller size."""
        num_heads = max(1, hidden_size // head_dim)
        return Proportions(
            self.architecture,
            vocab_size=round(self.vocab_size / (self.num_layers * self.hidden_size) * num_layers * hidden_size),
            num_layers=num_layers,
            hidden_size=hidden_size,
            intermediate_size=round(self.intermediate_size / self.hidden_size * hidden_size),
            num_heads=num_heads,
            num_kv_heads=max(1, round(num_heads * self.num_kv_heads / self.num_heads)),
        )


REAL_MODELS = {
    "qwen2.5-0.5b": Proportions("qwen2", 151936, 24, 896, 4864, 14, 2),
    "llama-3.2-1b": Proportions("llama", 128256, 16, 2048, 8192, 32, 8),
}


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly `vocab_size` tokens: pad, eos, the answer letters, then w0, w1, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", *(a.strip() for a in ANSWERS)]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )


def build(args):
    """The scaled model with its LoRA adapter (eval mode), tokenizer, examples and a synthetic posterior."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = REAL_MODELS[args.model].scaled(args.hidden, args.layers, args.head_dim)
    tokenizer = word_tokenizer(shape.vocab_size)
    config = AutoConfig.for_model(
        shape.architecture, vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=max(512, args.prompt_tokens + 1), tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lora = ModelArguments(model_name_or_path="scaled", lora_rank=8, lora_alpha=16.0, lora_dropout=0.0,
                          lora_target=["q_proj", "v_proj"])  # fmt: skip
    model = apply_lora(base, lora).to(args.device).eval()

    generator = torch.Generator().manual_seed(1)
    examples = []
    for i in range(args.examples):
        ids = torch.randint(len(ANSWERS) + 2, shape.vocab_size, (args.prompt_tokens,), generator=generator)
        gold = int(torch.randint(len(ANSWERS), (1,), generator=generator))
        examples.append(
            ChoiceExample(f"q{i}", " ".join(f"w{j - len(ANSWERS) - 2}" for j in ids.tolist()), ANSWERS, gold)
        )
    # Means with B != 0 (a fresh adapter has B = 0) and a variance that moves the predictions visibly.
    params = adapter_parameters(model)
    mean = {k: 0.05 * torch.randn(p.shape, generator=generator) for k, p in params.items()}
    variance = {k: 1e-3 * (0.5 + torch.rand(p.shape, generator=generator)) for k, p in params.items()}
    return shape, model, tokenizer, examples, Posterior(mean, variance)


def flops(model, shape: Proportions, tokens: int, num_choices: int) -> dict[str, float]:
    base = model.get_base_model()
    body_params = sum(p.numel() for p in base.model.layers.parameters())
    head_dim = base.config.hidden_size // base.config.num_attention_heads
    attention_width = base.config.num_attention_heads * head_dim
    body = 2 * body_params * tokens + 2 * shape.num_layers * tokens**2 * attention_width
    hidden, vocab = shape.hidden_size, shape.vocab_size
    return {"body": body, "naive": body + 2 * vocab * hidden * tokens, "ideal": body + 2 * num_choices * hidden,
            "last_position": body + 2 * vocab * hidden}  # fmt: skip


@torch.no_grad()
def naive_evaluate(model, tokenizer, examples, posterior, num_samples, batch_size, seed) -> dict:
    """The peers' evaluation: full B x T x V logits per pass, the last position's answer logits gathered after."""
    device = next(model.parameters()).device
    collator = ChoiceCollator(tokenizer)
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples]
    batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    gold = torch.tensor([e.gold for e in examples])

    def probs():
        chunks = []
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            answer = logits[:, -1, :].gather(1, batch["choice_token_ids"]).float()
            chunks.append(torch.softmax(answer.double(), dim=-1).cpu())
        return torch.cat(chunks)

    posterior.apply_mean(model)
    result = {"mean": calibration_metrics(probs(), gold, ECE_BINS), "by_num_samples": []}
    generator = torch.Generator().manual_seed(seed)  # as evaluate_predictive draws its samples
    running = 0
    for s in range(1, num_samples + 1):
        with posterior.sample(model, generator=generator):
            running = running + probs()
        result["by_num_samples"].append({"samples": s, **calibration_metrics(running / s, gold, ECE_BINS)})
    result["sampled"] = result["by_num_samples"][-1]
    return result


def assert_same_metrics(ours: dict, naive: dict) -> int:
    """Every metric of the naive result equals ours (up to float rounding of the two head GEMMs); returns the count."""
    pairs = [(ours["mean"], naive["mean"]), (ours["sampled"], naive["sampled"])]
    pairs += list(zip(ours["by_num_samples"], naive["by_num_samples"], strict=True))
    count = 0
    for a, b in pairs:
        for name, value in b.items():
            if not math.isclose(a[name], value, rel_tol=1e-6, abs_tol=1e-7):
                raise AssertionError(f"metric {name} differs: ours {a[name]!r}, naive {value!r}")
            count += 1
    return count


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each run, called in turn `repeats` times (after one untimed warm-up each).

    The order alternates (A B, B A, ...) so that a slow drift of the machine's load favours neither run.
    """
    times = {name: [] for name in runs}
    # stderr is muted: evaluate_predictive's progress bar would flood the output.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        for run in runs.values():
            run()
        for repeat in range(repeats):
            for name, run in list(runs.items())[:: -1 if repeat % 2 else 1]:
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def bench_forward_and_sampling(model, tokenizer, examples, posterior, args, device, count) -> None:
    """One forward pass of a benchmark batch, ours vs naive, and the draw + apply + restore of one sample."""
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples[: args.batch_size]]
    batch = {k: v.to(device) for k, v in ChoiceCollator(tokenizer)(rows).items()}
    sampler = posterior.sampler(model, seed=0)
    generator = torch.Generator(device).manual_seed(0)

    @torch.no_grad()
    def forward():
        choice_logits(model, batch)

    @torch.no_grad()
    def full_logits():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits[:, -1, :].gather(1, batch["choice_token_ids"])

    def cached():
        with sampler.sample():
            pass

    def fresh():
        with posterior.sample(model, generator=generator):
            pass

    runs = {"ours": forward, "naive": full_logits, "sampler.sample()": cached, "Posterior.sample()": fresh}
    repeats = max(30, 6 * args.repeats)
    times = interleaved(runs, repeats, device)
    forward_s = statistics.median(times["ours"])
    print(f"\none forward pass ({len(rows)} x {args.prompt_tokens} tokens), median of {repeats} interleaved:")
    print(f"  ours  {forward_s * 1e3:7.2f} ms   (choice_logits)")
    print(f"  naive {statistics.median(times['naive']) * 1e3:7.2f} ms   (full logits)   ratio "
          f"{paired_ratio(times, 'naive', 'ours'):.3f}x, physical {count['naive'] / count['ideal']:.3f}x")  # fmt: skip
    print(f"adapter: {sum(p.numel() for p in sampler.parameters.values())} entries in {len(sampler.parameters)} "
          "tensors; one sample, draw + apply + restore:")  # fmt: skip
    for name in ("sampler.sample()", "Posterior.sample()"):
        median = statistics.median(times[name])
        print(f"  {name:20s} {median * 1e3:8.3f} ms = {100 * median / forward_s:5.2f}% of a forward")


def bench_batched(model, tokenizer, examples, posterior, args, device) -> None:
    """S samples in one batched pass per batch against S sequential passes, same samples."""
    collator = ChoiceCollator(tokenizer)
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples]
    batches = [{k: v.to(device) for k, v in collator(rows[i : i + args.batch_size]).items()}
               for i in range(0, len(rows), args.batch_size)]  # fmt: skip
    posterior.apply_mean(model)
    outputs = {}

    @torch.no_grad()
    def sequential():
        sampler = posterior.sampler(model, seed=0)
        samples = []
        for _ in range(args.samples):
            with sampler.sample():
                samples.append(torch.cat([torch.softmax(choice_logits(model, b).double(), -1).cpu() for b in batches]))
        outputs["sequential"] = torch.stack(samples)

    def batched():
        outputs["batched"] = predict_sampled_probs(model, batches, posterior.sampler(model, seed=0), args.samples,
                                                   args.samples_per_pass)  # fmt: skip

    times = interleaved({"sequential": sequential, "batched": batched}, args.repeats, device)
    difference = (outputs["batched"] - outputs["sequential"]).abs().max().item()
    if difference > 1e-5:
        raise AssertionError(f"batched and sequential samples differ by {difference:.2e}")
    num = len(examples) * args.samples
    print(f"\nS = {args.samples} samples, batched ({args.samples_per_pass or args.samples} per pass) vs sequential "
          f"on {device.type}; probabilities agree to {difference:.1e}")  # fmt: skip
    for name in ("sequential", "batched"):
        print(f"  {name:10s} {num / statistics.median(times[name]):9.1f} example-samples/s")
    print(f"  batched speed-up: {paired_ratio(times, 'sequential', 'batched'):.3f}x (median of paired ratios)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `build`'s model and of where it runs."""
    parser.add_argument("--model", choices=sorted(REAL_MODELS), default="qwen2.5-0.5b", help="Proportions to keep.")
    parser.add_argument("--hidden", type=int, default=128, help="Scaled hidden size.")
    parser.add_argument("--layers", type=int, default=4, help="Scaled number of layers.")
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")


def quiet_device(args) -> torch.device:
    """The device of --device, with --threads CPU threads and library logging below errors muted."""
    logging.disable(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batched", action="store_true", help="Also time S samples in one batched pass.")
    parser.add_argument("--samples-per-pass", type=int, default=None, help="Batched: samples per forward pass.")
    args = parser.parse_args()
    device = quiet_device(args)

    shape, model, tokenizer, examples, posterior = build(args)
    count = flops(model, shape, args.prompt_tokens, len(ANSWERS))
    print(f"{args.model} proportions, scaled: {shape}")
    print(f"vocab / (layers x hidden) = {shape.vocab_size / (shape.num_layers * shape.hidden_size):.2f}; "
          f"{args.examples} examples x {args.prompt_tokens} tokens, K = {len(ANSWERS)}, batch {args.batch_size}, "
          f"S = {args.samples}, device {device}, {torch.get_num_threads()} threads")  # fmt: skip

    def ours():
        return evaluate_predictive(model, tokenizer, examples, posterior, num_samples=args.samples,
                                   batch_size=args.batch_size, seed=args.seed, ece_bins=ECE_BINS)  # fmt: skip

    def naive():
        return naive_evaluate(model, tokenizer, examples, posterior, args.samples, args.batch_size, args.seed)

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        results = {"ours": ours(), "naive": naive()}
    checked = assert_same_metrics(results["ours"], results["naive"])
    print(f"metrics identical: {checked} values (mean, and 1..{args.samples} samples) agree to 1e-6")
    for name, result in results.items():
        sampled = result["sampled"]
        print(f"  {name:5s} S = {args.samples}: " + ", ".join(f"{k} {sampled[k]:.6f}" for k in
                                                        ("accuracy", "nll", "brier", "ece_10", "ece_15")))  # fmt: skip
    times = interleaved({"ours": ours, "naive": naive}, args.repeats, device)
    print(f"\nevaluation at the mean + S = {args.samples} samples ({args.samples + 1} passes over the data), "
          f"median of {args.repeats}:")  # fmt: skip
    for name, what in (("ours", "evaluate_predictive, last-position head"), ("naive", "full B x T x V logits")):
        print(f"  {name:5s} {args.examples / statistics.median(times[name]):8.1f} examples/s   ({what})")
    measured = paired_ratio(times, "naive", "ours")
    physical = count["naive"] / count["ideal"]
    print(f"  measured ratio naive / ours: {measured:.3f}x (median of paired ratios)")
    print(f"  physical ratio (FLOPs):      {physical:.3f}x  (head at the last position over all V: "
          f"{count['naive'] / count['last_position']:.3f}x)")  # fmt: skip
    print(f"  measured / physical:         {measured / physical:.3f}")

    bench_forward_and_sampling(model, tokenizer, examples, posterior, args, device, count)
    if args.batched:
        bench_batched(model, tokenizer, examples, posterior, args, device)


if __name__ == "__main__":
    main()
