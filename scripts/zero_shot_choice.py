"""Zero-shot accuracy of a base model (no adapter) on a multiple-choice task under each answer scoring.

    python scripts/zero_shot_choice.py --model builtin:smollm2-135m --task wordpick --split validation \
        --out results/wordpick-smollm2/zero-shot.json [--scorings letter text text_norm] [--limit N]

Scores the split's questions at the base model's weights (`evaluation.predict.predict`, no samples) under each
`answer_scoring` (letter: one answer letter at the prompt's end; text / text_norm: each answer text's log-likelihood,
lm-eval's acc / acc_norm) and writes accuracy, NLL, ECE and the chance level per scoring, with the protocol and the
package versions. Nothing is trained or tuned.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--task", default="wordpick")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--scorings", nargs="+", default=["letter", "text", "text_norm"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()

    import torch

    from ivon_lora.fileio import write_json_atomic
    from ivon_lora.choice import format_examples
    from ivon_lora.config import ModelArguments
    from ivon_lora.evaluation.predict import predict, protocol
    from ivon_lora.modeling import load_base_model, load_tokenizer
    from ivon_lora.rundir import environment
    from ivon_lora.tasks import get_protocol, get_task, load_split

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_split(options.task, options.split, limit=options.limit)
    model_args = ModelArguments(options.model)
    tokenizer = load_tokenizer(model_args)
    model = load_base_model(model_args, tokenizer).eval()
    preset = get_protocol("ivon-lora")
    results = {}
    for scoring in options.scorings:
        args = dataclasses.replace(model_args, answer_scoring=scoring)
        examples = format_examples(loaded.examples, tokenizer, args)
        start = time.perf_counter()
        predictions = predict(model, tokenizer, examples, num_samples=0, batch_size=options.batch_size)
        metrics = predictions.metrics((10,))["mean"]
        chance = sum(1 / n for n in predictions.num_choices) / len(predictions.num_choices)
        results[scoring] = {"protocol": protocol(preset, 0, [10], scoring), "accuracy": metrics["accuracy"],
                            "nll": metrics["nll"], "ece_10": metrics["ece_10"], "chance": chance,
                            "seconds": time.perf_counter() - start}  # fmt: skip
        print(f"{scoring}: accuracy {100 * metrics['accuracy']:.1f}% (chance {100 * chance:.1f}%), NLL "
              f"{metrics['nll']:.3f}, ECE-10 {100 * metrics['ece_10']:.1f}")  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    write_json_atomic(options.out, {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "model": options.model, "task": get_task(options.task).as_dict(), "split": options.split,
        "data": loaded.as_dict(), "num_examples": len(loaded.examples), "scorings": results,
        "environment": environment(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
