"""`ivon-lora train`: recipe -> model and data -> Trainer -> run dir (adapter, posterior, metrics, recipe)."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import yaml

from .recipe import Recipe
from .run import METRICS_NAME, PREDICTIONS_NAME, RECIPE_NAME

logger = logging.getLogger(__name__)



def environment() -> dict:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("ivon-lora", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def write_json_atomic(path: str, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def choice_trainer_class():
    from transformers import Trainer

    from .objective import ChoiceLossMixin
    from .trainer import IVONTrainerMixin

    class ChoiceTrainer(IVONTrainerMixin, ChoiceLossMixin, Trainer):
        """The multiple-choice objective, trained with IVON or (optim != 'ivon') a transformers optimizer."""

    return ChoiceTrainer


def _as_rows(examples) -> list[dict]:
    return [{"prompt": e.prompt, "answers": list(e.answers), "gold": e.gold} for e in examples]


def run_train(recipe: Recipe) -> dict:
    import datasets
    import torch
    from transformers import set_seed

    from .evaluation.metrics import calibration_metrics
    from .evaluation.predict import predict, protocol
    from .evaluation.report import write_jsonl
    from .modeling import (
        apply_lora,
        check_quantization_support,
        load_base_model,
        load_tokenizer,
    )
    from .objective import ChoiceCollator, format_examples
    from .posterior import Posterior
    from .tasks import get_protocol, load_split

    model_args, data_args, run_args, args = recipe.model, recipe.data, recipe.run, recipe.training
    # Data and tokenizer first: a bad record fails before the model loads and before output_dir is written.
    preset = get_protocol(run_args.protocol)
    train_split = load_split(data_args.dataset, data_args.train_split, data_args.train_file, data_args.max_train_samples,
                             protocol=preset)  # fmt: skip
    eval_split = load_split(data_args.dataset, data_args.eval_split, data_args.eval_file, data_args.max_eval_samples,
                            protocol=preset)  # fmt: skip
    train_examples, eval_examples = train_split.examples, eval_split.examples
    check_quantization_support(model_args)
    tokenizer = load_tokenizer(model_args)
    # The prompts as this model sees them (chat template or plain) and answers spelled as single tokens.
    train_examples = format_examples(train_examples, tokenizer, model_args)
    eval_examples = format_examples(eval_examples, tokenizer, model_args)
    collator = ChoiceCollator(tokenizer, data_args.max_length)
    collator(_as_rows(train_examples[:1] + eval_examples[:1]))  # resolves the answer tokens, or fails now
    logger.info("%s: %d train / %d eval examples", data_args.dataset, len(train_examples), len(eval_examples))
    if args.process_index == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, RECIPE_NAME), "w") as f:
            versions = ", ".join(f"{name} {version}" for name, version in environment().items())
            f.write(f"# Resolved recipe of this run ({versions}).\n")
            yaml.safe_dump(recipe.resolved(), f, sort_keys=True)

    set_seed(args.seed)
    model = apply_lora(load_base_model(model_args, tokenizer, seed=args.seed), model_args)
    model.print_trainable_parameters()

    def compute_metrics(prediction):
        logits = torch.as_tensor(prediction.predictions).double()
        return calibration_metrics(torch.softmax(logits, dim=-1), torch.as_tensor(prediction.label_ids))

    trainer = choice_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(_as_rows(train_examples)),
        eval_dataset=datasets.Dataset.from_list(_as_rows(eval_examples)),
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()  # adapter, tokenizer and (IVON) posterior

    trainer.accelerator.wait_for_everyone()  # every rank reads what the main process saved

    # The reported numbers come from the saved artifact, so they are what a user reloading it gets. Every rank
    # scores its shard of the examples; all of them receive the gathered probabilities.
    posterior = Posterior.load(args.output_dir) if trainer.ivon_optimizer is not None else None
    num_samples = run_args.eval_mc_samples if posterior is not None else 0
    predictions = predict(
        trainer.accelerator.unwrap_model(trainer.model),
        tokenizer,
        eval_examples,
        posterior=posterior,
        num_samples=num_samples,
        batch_size=args.per_device_eval_batch_size,
        max_length=data_args.max_length,
        seed=run_args.eval_seed,
    )
    ece_bins = sorted(set(run_args.ece_bins) | {preset.ece_bins})  # the protocol's headline ECE is always there
    metrics = predictions.metrics(ece_bins)
    report = {
        "task": data_args.dataset,
        "split": data_args.eval_split,
        "optimizer": args.optim,
        "protocol": protocol(preset, num_samples, ece_bins),
        "data": {"train": train_split.as_dict(), "eval": eval_split.as_dict()},
        "metrics": metrics,
        "train": train_result.metrics,
        "environment": environment(),
        "recipe": recipe.resolved(),
    }
    if args.process_index == 0:
        write_jsonl(os.path.join(args.output_dir, PREDICTIONS_NAME), predictions.rows())
        write_json_atomic(os.path.join(args.output_dir, METRICS_NAME), report)
        _log_summary(metrics)
    return report


def _log_summary(metrics: dict) -> None:
    rows = [("mean", metrics["mean"])]
    if "sampled" in metrics:
        rows.append((f"{metrics['sampled']['samples']} samples", metrics["sampled"]))
    for name, m in rows:
        logger.info(
            "%-10s accuracy %.1f  nll %.3f  ece_10 %.1f  brier %.3f",
            name, 100 * m["accuracy"], m["nll"], 100 * m.get("ece_10", float("nan")), m["brier"],
        )  # fmt: skip
