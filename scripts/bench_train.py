"""Seconds per training step of the demo model, IVON vs AdamW, in one process (interleaved, medians).

    python scripts/bench_train.py [--steps 60] [--repeats 5] [--batch-size 16]

Each run is a full `Trainer.train()` of the demo recipe's model and data for --steps optimizer steps; the time
per step excludes model building and the first (warm-up) run of each optimizer.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import datasets
import torch
import transformers

from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model, build_tokenizer
from ivon_lora.modeling import apply_lora
from ivon_lora.choice import ChoiceCollator
from ivon_lora.config import load_recipe
from ivon_lora.tasks import load_examples
from ivon_lora.choice import ChoiceTrainer, choice_rows

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "demo.yaml")


def seconds_per_step(optim: str, steps: int, batch_size: int, tokenizer, rows, output_dir: str) -> float:
    overrides = [f"output_dir={output_dir}", f"optim={optim}", f"max_steps={steps}", "overwrite_output_dir=true",
                 f"per_device_train_batch_size={batch_size}", "disable_tqdm=true", "logging_steps=100000"]  # fmt: skip
    recipe = load_recipe(DEMO, overrides + (["learning_rate=0.003"] if optim != "ivon" else []))
    torch.manual_seed(0)
    model = apply_lora(build_tiny_model(BUILTIN_MODELS[recipe.model.model_name_or_path], tokenizer), recipe.model)
    trainer = ChoiceTrainer(
        model=model,
        args=recipe.training,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=ChoiceCollator(tokenizer, recipe.data.max_length),
    )
    start = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    options = parser.parse_args()
    transformers.logging.set_verbosity_error()
    logging.disable(logging.WARNING)

    tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    rows = choice_rows(load_examples("synthetic", "train"))
    times = {"ivon": [], "adamw_torch": []}
    with tempfile.TemporaryDirectory() as output_dir:
        for repeat in range(options.repeats + 1):
            for optim in times:
                t = seconds_per_step(optim, options.steps, options.batch_size, tokenizer, rows, output_dir)
                if repeat > 0:  # the first round warms up
                    times[optim].append(t)
    ivon, adamw = (statistics.median(times[k]) for k in ("ivon", "adamw_torch"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {options.batch_size}, "
          f"{options.steps} steps x {options.repeats} repeats (medians)")  # fmt: skip
    print(f"{'optimizer':<12} {'ms/step':>9}")
    print(f"{'IVON':<12} {1000 * ivon:>9.2f}")
    print(f"{'AdamW':<12} {1000 * adamw:>9.2f}")
    print(f"IVON / AdamW: {ivon / adamw:.3f}x")


if __name__ == "__main__":
    main()
