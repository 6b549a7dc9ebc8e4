"""Time one optimizer step on LoRA-shaped parameters: our IVON (foreach and for-loop), AdamW, ivon-opt.

An IVON step here is what training pays per step: enter ``sampled_params(train=True)`` (draw the noise,
perturb the weights), set the gradients, exit (record g and eps * g, restore the means), ``step()``.
The gradients are precomputed once and *assigned* (``p.grad = grad``, no copy) — for AdamW before the
timed region, for the IVONs inside their contexts, where they must be — so no optimizer pays for filling
them. The optimizers are timed interleaved in one process, and the median over repeats is reported.

ivon-opt (GPL-3.0+) is imported here as a baseline only; the library never imports it.

    python scripts/bench_optimizer.py --device cpu --layers 32 --rank 16 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ivon_lora.optim import IVON  # noqa: E402

# Llama-3-8B attention projections: name -> (in_features, out_features).
LLAMA3_8B_PROJECTIONS = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096)}


def lora_params(layers: int, rank: int, device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(layers):
        for in_features, out_features in LLAMA3_8B_PROJECTIONS.values():
            lora_a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
            lora_b = torch.randn(out_features, rank, generator=generator) * 1e-3
            params += [torch.nn.Parameter(lora_a.to(device)), torch.nn.Parameter(lora_b.to(device))]
    return params


def make_steps(args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(1)
    reference = lora_params(args.layers, args.rank, device)
    grads = [(torch.randn(p.shape, generator=generator) * 1e-3).to(device) for p in reference]

    def fresh_params():
        return [torch.nn.Parameter(p.detach().clone()) for p in reference]

    ivon_kwargs = dict(lr=0.03, ess=1e7, hess_init=3e-4, weight_decay=0.0, rescale_lr=False, clip_radius=1e-3)

    def ivon_step(optimizer, params):
        def step():
            with optimizer.sampled_params(train=True):
                for p, grad in zip(params, grads):
                    p.grad = grad
            optimizer.step()

        return step

    steps = {}
    for name, foreach in (("IVON (ours, foreach)", True), ("IVON (ours, for-loop)", False)):
        params = fresh_params()
        steps[name] = ivon_step(IVON(params, **ivon_kwargs, seed=0, foreach=foreach), params)

    params = fresh_params()
    adamw = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, foreach=True)
    for p, grad in zip(params, grads):
        p.grad = grad
    steps["AdamW (torch, foreach)"] = adamw.step

    if not args.skip_reference:
        import ivon  # ivon-opt, the reference implementation

        params = fresh_params()
        steps["ivon-opt 0.1.3"] = ivon_step(ivon.IVON(params, **ivon_kwargs), params)
    return steps


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, list[float]]:
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize(args.device)
            start = time.perf_counter()
            step()
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    return times


def ivon_breakdown(args: argparse.Namespace) -> dict[str, float]:
    """Median ms of the phases of our IVON step (default implementation), and of the noise draw alone."""
    device = torch.device(args.device)
    params = lora_params(args.layers, args.rank, device)
    grads = [torch.full_like(p, 1e-3) for p in params]
    optimizer = IVON(params, lr=0.03, ess=1e7, hess_init=3e-4, weight_decay=0.0, clip_radius=1e-3, seed=0)
    phases: dict[str, list[float]] = {
        "draw noise only": [],
        "enter (draw + perturb)": [],
        "exit (record + restore)": [],
        "step()": [],
    }

    def timed(phase, fn):
        synchronize(args.device)
        start = time.perf_counter()
        fn()
        synchronize(args.device)
        phases[phase].append(time.perf_counter() - start)

    for repeat in range(args.warmup + args.repeats):
        context = optimizer.sampled_params(train=True)
        timed("enter (draw + perturb)", context.__enter__)
        for p, grad in zip(params, grads):
            p.grad = grad
        timed("exit (record + restore)", lambda: context.__exit__(None, None, None))
        timed("step()", optimizer.step)
        timed(
            "draw noise only",
            lambda: [optimizer._sample_noise(b.params, b.noise, 1.0) for b in optimizer._get_buckets()],
        )
        if repeat < args.warmup:
            for times in phases.values():
                times.clear()
    return {phase: statistics.median(times) * 1e3 for phase, times in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-reference", action="store_true", help="do not time ivon-opt")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    numel = sum(p.numel() for p in lora_params(args.layers, args.rank, torch.device("meta")))
    print(
        f"LoRA rank {args.rank} on q/k/v/o of {args.layers} Llama-3-8B layers: {numel / 1e6:.1f}M float32 "
        f"parameters in {8 * args.layers} tensors; device {args.device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; median of {args.repeats} interleaved repeats"
    )
    times = time_interleaved(make_steps(args), args)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    adamw = medians["AdamW (torch, foreach)"]
    reference = medians.get("ivon-opt 0.1.3")
    print(f"\n| {'optimizer':24s} | ms/step | vs AdamW | ivon-opt / this |")
    print(f"|{'-' * 26}|---------|----------|-----------------|")
    for name, ms in medians.items():
        speedup = f"{reference / ms:15.2f}" if reference else f"{'-':>15s}"
        print(f"| {name:24s} | {ms:7.1f} | {ms / adamw:7.2f}x | {speedup} |")

    print("\nOur IVON step (foreach=None: the default for the device) by phase, median ms:")
    for phase, ms in ivon_breakdown(args).items():
        print(f"  {phase:26s} {ms:7.1f}")


if __name__ == "__main__":
    main()
