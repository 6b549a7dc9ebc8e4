"""Seconds per SFT step, IVON vs AdamW, through TRL's SFTTrainer, in one process (interleaved runs, medians).

    python scripts/bench_sft.py [--recipe recipes/demo-sft.yaml] [--steps 20] [--repeats 3] [--threads 2]

Each run is a full `IVONSFTTrainer.train()` of the recipe's model and data for --steps optimizer steps, once with
optim=ivon and once with optim=adamw_torch (everything else equal); the model is built before the clock starts and
the first round of each optimizer is a warm-up. `recipes/demo-sft.yaml` is the tiny demo model;
`recipes/smollm2/sft-wordqa-ivon.yaml` a real 135M-parameter model (SmolLM2-135M-Instruct, fetched once).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import torch
import transformers

from ivon_lora.config import load_recipe
from ivon_lora.modeling import apply_lora, load_base_model, load_tokenizer
from ivon_lora.sft import IVONSFTTrainer
from ivon_lora.sft.data import load_sft_split


def seconds_per_step(recipe_path: str, optim: str, steps: int, output_dir: str, tokenizer, train_rows) -> float:
    overrides = [f"output_dir={output_dir}", f"optim={optim}", f"max_steps={steps}", "overwrite_output_dir=true",
                 "disable_tqdm=true", "logging_steps=100000", "final_eval_samples=0"]  # fmt: skip
    recipe = load_recipe(recipe_path, overrides + (["learning_rate=1e-3"] if optim != "ivon" else []))
    model = apply_lora(load_base_model(recipe.model, tokenizer, seed=0), recipe.model)
    trainer = IVONSFTTrainer(model=model, args=recipe.training, train_dataset=train_rows, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo-sft.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    logging.disable(logging.WARNING)

    recipe = load_recipe(options.recipe, for_training=False)
    tokenizer = load_tokenizer(recipe.model)
    data = recipe.data
    train_rows = load_sft_split(
        data.dataset, data.train_split, data.train_file, config_name=data.dataset_config
    ).dataset
    times = {"ivon": [], "adamw_torch": []}
    with tempfile.TemporaryDirectory() as output_dir:
        for repeat in range(options.repeats + 1):
            for optim in times:
                t = seconds_per_step(options.recipe, optim, options.steps, output_dir, tokenizer, train_rows)
                if repeat > 0:  # the first round warms up
                    times[optim].append(t)
    ivon, adamw = (statistics.median(times[k]) for k in ("ivon", "adamw_torch"))
    print(
        f"{options.recipe}: torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{recipe.training.per_device_train_batch_size}, {options.steps} steps x {options.repeats} repeats (medians)"
    )
    print(f"{'optimizer':<12} {'ms/step':>9}")
    print(f"{'IVON':<12} {1000 * ivon:>9.1f}")
    print(f"{'AdamW':<12} {1000 * adamw:>9.1f}")
    print(
        f"IVON / AdamW: {ivon / adamw:.3f}x (all runs: IVON {[round(1000 * t, 1) for t in times['ivon']]}, "
        f"AdamW {[round(1000 * t, 1) for t in times['adamw_torch']]} ms)"
    )


if __name__ == "__main__":
    main()
