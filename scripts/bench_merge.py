"""Seconds to merge two Llama-3-8B-shaped LoRA adapters (r=16 on q/k/v/o of 32 layers, random tensors) per method.

    flock /tmp/ivon-study.lock python scripts/bench_merge.py [--layers 32] [--out results/merge-bench/bench.json]

Each method merges the same two adapters (with random posterior variances) through `ivon_lora.merging.merge_adapters`,
the library path of `ivon-lora merge` without file writes: PEFT's types run add_weighted_adapter on the stand-in model
(no base weights), `uncertainty` / `posterior` run in ΔW space (elementwise work + one truncated SVD per matrix,
randomized above 1024) and in factor space. Methods whose time grows past --budget seconds on --probe-layers layers
are timed on those and scaled to --layers (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ivon_lora.merging.runs import MergeInput, merge_adapters  # noqa: E402
from ivon_lora.rundir import environment  # noqa: E402

# Llama-3-8B: hidden 4096, 32 heads of 128, 8 key/value heads (k/v out 1024).
SHAPES = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096)}
METHODS = [("linear", {}), ("cat", {}), ("ties", {"density": 0.5}), ("dare_ties", {"density": 0.5}),
           ("magnitude_prune", {"density": 0.5}), ("svd", {}), ("ties_svd", {"density": 0.5}),
           ("uncertainty", {"space": "factor"}), ("posterior", {"space": "factor"}),
           ("uncertainty", {"space": "delta"}), ("posterior", {"space": "delta"})]  # fmt: skip


def adapter(layers: int, rank: int, seed: int) -> MergeInput:
    generator = torch.Generator().manual_seed(seed)
    tensors, variance = {}, {}
    for layer in range(layers):
        for name, (out_features, in_features) in SHAPES.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    for key, tensor in tensors.items():
        variance[key] = torch.rand(tensor.shape, generator=generator) * 1e-4 + 1e-5
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": sorted(SHAPES), "peft_type": "LORA",
              "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B"}  # fmt: skip
    return MergeInput(f"random-{seed}", config, tensors, variance, {"ess": 1e6, "weight_decay": 0.0}, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--probe-layers", type=int, default=1)
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds per method before it is scaled from a probe"
    )
    parser.add_argument("--out", default="results/merge-bench/bench.json")
    options = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    full = [adapter(options.layers, options.rank, seed) for seed in (0, 1)]
    probe = [adapter(options.probe_layers, options.rank, seed) for seed in (0, 1)]
    merge_adapters(probe, "linear", [0.5, 0.5])  # imports and first-call setup out of the timings
    results = []
    for method, settings in METHODS:
        start = time.perf_counter()
        merge_adapters(probe, method, [0.5, 0.5], **settings)
        per_layer = (time.perf_counter() - start) / options.probe_layers
        if per_layer * options.layers <= options.budget:
            start = time.perf_counter()
            merge_adapters(full, method, [0.5, 0.5], **settings)
            seconds, measured = time.perf_counter() - start, f"{options.layers} layers"
        else:
            seconds, measured = per_layer * options.layers, f"{options.probe_layers} layers, scaled"
        label = method + (f" ({settings['space']})" if "space" in settings else "")
        results.append({"method": label, "seconds": seconds, "measured_on": measured, **settings})
        print(f"{label:24s} {seconds:8.2f} s  ({measured})", flush=True)
    os.makedirs(os.path.dirname(options.out), exist_ok=True)
    with open(options.out, "w") as f:
        json.dump({"command": " ".join(["python", *sys.argv]), "shapes": SHAPES, "layers": options.layers,
                   "rank": options.rank, "threads": torch.get_num_threads(), "results": results,
                   "environment": environment()}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
