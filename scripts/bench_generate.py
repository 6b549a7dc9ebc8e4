"""Decoding speed with S posterior samples: S samples batched in one forward pass against S sequential passes.

    python scripts/bench_generate.py --threads 1                      # CPU, scaled-down Qwen2.5-0.5B proportions
    python scripts/bench_generate.py --device cuda --hidden 896 --layers 24 --head-dim 64 --prompts 16 \\
        --batch-size 16 --prompt-tokens 64 --new-tokens 32           # GPU, Qwen2.5-0.5B's own shape

The model, tokenizer, LoRA adapter (r 8, q/v) and synthetic posterior are `bench_eval.py`'s: a randomly initialised
Qwen2 / Llama with a real model's proportions scaled down together, prompts of --prompt-tokens random words. A random
model rarely emits its EOS, so answers run to --new-tokens; tokens/s counts the answers' tokens (S answers per prompt
for per-sample decoding, one for averaged decoding), and the ratio is the median of paired per-repeat ratios of
interleaved runs (`bench_eval.interleaved`), so a shared machine slows both sides alike.

(a) One greedy answer per posterior sample, S answers per prompt:
    batched      `decode_samples`: S x B rows in one forward per step (`per_sample_lora`), one KV cache;
    generate()   S sequential `generate(..., do_sample=False)` calls (a generate kwarg: `model.generate`'s path), sample
                 k held in the adapter (`PosteriorSampler.sample()`);
    sequential   S sequential `decode_mean` calls under the same samples (the batched side's loop, S = 1).
(b) Posterior-averaged decoding (argmax of the mean of the S next-token distributions):
    batched      `decode_averaged`: S x B rows in one forward per step, one KV cache;
    sequential   per step, S forwards of the B prompts, sample k's weights copied into the adapter, one KV cache
                 per sample;
    naive        the plain re-implementation of tests/generation/test_decoding.py: per prompt and step, S full forwards of
                 prompt + answer so far (no cache), weights copied in per sample.
Every side's answers are compared with the batched ones (token agreement is printed; on a GPU, float rounding of
the batched LoRA product can flip a near tie).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_eval's model builder and timing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from bench_eval import add_model_arguments, build, interleaved, paired_ratio, quiet_device  # noqa: E402

from ivon_lora.generation.decoding import _cache_argument, decode_averaged, decode_mean, decode_samples  # noqa: E402
from ivon_lora.generation import generate  # noqa: E402
from ivon_lora.posterior import adapter_parameters  # noqa: E402


def sample_weights(model, posterior, num_samples: int, seed: int) -> list[list[torch.Tensor]]:
    """The adapter's tensors under the first S samples, as `decode_*` draws them (CPU generator seeded by `seed`)."""
    sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed))
    params = list(adapter_parameters(model).values())
    weights = []
    for _ in range(num_samples):
        with sampler.sample():
            weights.append([p.detach().clone() for p in params])
    return weights


@torch.no_grad()
def load(params, weights) -> None:
    torch._foreach_copy_(params, weights)


def left_padded(tokenizer, texts, device):
    encoded = tokenizer(texts)
    width = max(len(ids) for ids in encoded["input_ids"])
    ids = [[tokenizer.pad_token_id] * (width - len(i)) + i for i in encoded["input_ids"]]
    mask = [[0] * (width - len(i)) + [1] * len(i) for i in encoded["input_ids"]]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


@torch.no_grad()
def averaged_sequential(model, tokenizer, texts, weights, new_tokens, batch_size, device) -> list[list[int]]:
    """Posterior-averaged greedy decoding, samples one after another: per step and batch, S cached forwards."""
    params = list(adapter_parameters(model).values())
    saved = [p.detach().clone() for p in params]
    out = []
    for start in range(0, len(texts), batch_size):
        input_ids, mask = left_padded(tokenizer, texts[start : start + batch_size], device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        caches, tokens, step, cache_key = [None] * len(weights), [], input_ids, _cache_argument(model)
        for _ in range(new_tokens):
            probs = 0
            for k, w in enumerate(weights):
                load(params, w)
                output = model(input_ids=step, attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1, **{cache_key: caches[k]})  # fmt: skip
                caches[k] = getattr(output, cache_key)
                probs = probs + torch.softmax(output.logits[:, -1].float(), -1)
            token = (probs / len(weights)).argmax(-1)
            tokens.append(token)
            step, positions = token[:, None], positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out.extend(torch.stack(tokens, 1).tolist())
    load(params, saved)
    return out


@torch.no_grad()
def averaged_naive(model, tokenizer, texts, weights, new_tokens, device) -> list[list[int]]:
    """The plain re-implementation: per prompt and step, S full forwards without cache, softmaxes averaged."""
    params = list(adapter_parameters(model).values())
    saved = [p.detach().clone() for p in params]
    out = []
    for ids in tokenizer(texts)["input_ids"]:
        tokens = []
        for _ in range(new_tokens):
            probs = 0
            for w in weights:
                load(params, w)
                logits = model(input_ids=torch.tensor([ids + tokens], device=device)).logits[0, -1].float()
                probs = probs + torch.softmax(logits, -1)
            tokens.append(int((probs / len(weights)).argmax()))
        out.append(tokens)
    load(params, saved)
    return out


def agreement(reference: list[list[int]], other: list[list[int]], eos: int) -> str:
    """How many answers are the same tokens (`other`'s cut after its first EOS, as `decode_*` cut them)."""
    other = [ids[: ids.index(eos) + 1] if eos in ids else ids for ids in other]
    same = sum(a == b for a, b in zip(reference, other, strict=True))
    return f"{same}/{len(reference)} answers token-identical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16, help="max_new_tokens of every answer.")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4, help="Prompts per batch (batched: S x this rows).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-naive", action="store_true", help="Skip the cache-free re-implementation (slow).")
    args = parser.parse_args()
    args.examples = args.prompts  # bench_eval.build's name for them
    device = quiet_device(args)
    shape, model, tokenizer, examples, posterior = build(args)
    texts = [e.prompt for e in examples]
    posterior.apply_mean(model)
    num, new = args.samples, args.new_tokens
    print(f"{args.model} proportions, scaled: {shape}")
    print(f"{args.prompts} prompts x {args.prompt_tokens} tokens, up to {new} new tokens, S = {num}, batch "
          f"{args.batch_size} prompts, device {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {version('transformers')}")  # fmt: skip
    options = {"max_new_tokens": new, "batch_size": args.batch_size, "chat": False}
    weights = sample_weights(model, posterior, num, args.seed)
    out = {}

    def batched_samples():
        out["batched"] = decode_samples(model, tokenizer, texts, posterior, num, seed=args.seed, **options)

    def under_each_sample(decode):
        sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(args.seed))
        answers = []
        for _ in range(num):
            with sampler.sample():
                answers.append(decode())
        return answers

    def generate_calls():
        out["generate()"] = under_each_sample(lambda: [g.mean for g in generate(
            model, tokenizer, texts, max_new_tokens=new, batch_size=args.batch_size, chat=False,
            do_sample=False)])  # a generate kwarg: model.generate's path, not the batched decoder  # fmt: skip

    def sequential_samples():
        out["sequential"] = under_each_sample(lambda: decode_mean(model, tokenizer, texts, **options))

    runs = {"batched": batched_samples, "generate()": generate_calls, "sequential": sequential_samples}
    times = interleaved(runs, args.repeats, device)
    batched = [[list(a.token_ids) for a in answers] for answers in out["batched"]]
    tokens = sum(len(ids) for answers in batched for ids in answers)
    by_sample = [[batched[i][k] for i in range(len(texts))] for k in range(num)]
    texts_by_sample = [[out["batched"][i][k].text for i in range(len(texts))] for k in range(num)]
    same_text = sum(a == b for k in range(num) for a, b in zip(texts_by_sample[k], out["generate()"][k]))
    same_tokens = sum(a == list(b.token_ids) for k in range(num) for a, b in zip(by_sample[k], out["sequential"][k]))
    print(
        f"\n(a) one answer per posterior sample ({len(texts) * num} answers, {tokens} tokens); generate(): "
        f"{same_text}/{len(texts) * num} texts identical, sequential: {same_tokens}/{len(texts) * num} token-identical"
    )
    for name in runs:
        print(f"  {name:11s} {tokens / statistics.median(times[name]):9.1f} tokens/s")
    for name in ("generate()", "sequential"):
        print(f"  batched speed-up over {name}: {paired_ratio(times, name, 'batched'):.2f}x")

    def batched_averaged():
        out["avg batched"] = [
            list(a.token_ids)
            for a in decode_averaged(model, tokenizer, texts, posterior, num, seed=args.seed, **options)
        ]

    def sequential_averaged():
        out["avg sequential"] = averaged_sequential(model, tokenizer, texts, weights, new, args.batch_size, device)

    def naive_averaged():
        out["avg naive"] = averaged_naive(model, tokenizer, texts, weights, new, device)

    runs = {"batched": batched_averaged, "sequential": sequential_averaged}
    if not args.no_naive:
        runs["naive"] = naive_averaged
    times = interleaved(runs, args.repeats, device)
    tokens = sum(len(ids) for ids in out["avg batched"])
    eos = tokenizer.eos_token_id
    print(f"\n(b) posterior-averaged decoding ({len(texts)} answers, {tokens} tokens, S = {num} forwards a token); "
          f"sequential: {agreement(out['avg batched'], out['avg sequential'], eos)}"
          + ("" if args.no_naive else f", naive: {agreement(out['avg batched'], out['avg naive'], eos)}"))  # fmt: skip
    for name in runs:
        print(f"  {name:11s} {tokens / statistics.median(times[name]):9.1f} tokens/s")
    for name in list(runs)[1:]:
        print(f"  batched speed-up over {name}: {paired_ratio(times, name, 'batched'):.2f}x")


if __name__ == "__main__":
    main()
