"""`ivon-lora train`: recipe -> model and data -> Trainer -> run dir (adapter, posterior, metrics, recipe)."""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="Finetune a LoRA adapter with IVON (or a baseline optimizer) from a YAML recipe.",
        description="Train from RECIPE (YAML); key=value arguments override recipe keys.",
    )
    parser.add_argument("recipe", nargs="?", help="YAML recipe file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe key overrides")
    parser.add_argument("--help-keys", action="store_true", help="list every recipe key and exit")
    return parser


def config_from(options: argparse.Namespace):
    """The recipe (`ivon_lora.config.Recipe`); None after printing the keys for --help-keys."""
    from ..config import describe_keys, load_recipe

    if options.help_keys:
        print(describe_keys())
        return None
    if options.recipe is None:
        from ..errors import UsageError

        raise UsageError("a RECIPE.yaml is required (see recipes/demo.yaml)")
    return load_recipe(options.recipe, options.overrides)


def trainer_class(objective: str = "choice"):
    """The Trainer class `main` trains `objective` with (a seam for tests that interrupt a run)."""
    if objective == "sft":
        from ..sft import IVONSFTTrainer

        return IVONSFTTrainer
    from ..choice import ChoiceTrainer

    return ChoiceTrainer


def main(recipe) -> int:
    run_train(recipe)
    return 0


def run_train(recipe) -> dict:
    """Train `recipe`; returns what metrics.json holds."""
    if recipe.objective == "sft":
        return _run_sft(recipe)
    return _run_choice(recipe)


def _load_model(recipe, tokenizer, start=None):
    """The base model with LoRA; its adapter starts at the previous run's (`start`, from prior_from / init_from)."""
    from transformers import set_seed

    from ..continual import apply_starting_point
    from ..modeling import apply_lora, load_base_model

    set_seed(recipe.training.seed)
    model = apply_lora(load_base_model(recipe.model, tokenizer, seed=recipe.training.seed), recipe.model)
    if start is not None:
        apply_starting_point(model, start)
        logger.info("%s: the adapter starts at %s", start.key, start.provenance["run_dir"])
    model.print_trainable_parameters()
    return model


def _starting_point(recipe):
    """The previous run of prior_from / init_from, checked against the recipe before any model loads (or None)."""
    from ..continual import load_starting_point

    return load_starting_point(recipe)


def _trainer_kwargs(start) -> dict:
    """What the Trainer takes of the starting point: the prior (prior_from) and the record of the run."""
    if start is None:
        return {}
    return {"prior": start.prior, "prior_provenance": start.provenance}


def _start_output_dir(recipe) -> None:
    """Create output_dir (clearing a previous run's artifacts with overwrite_output_dir) and write the recipe.

    Called only once everything has been checked and loaded: a run that fails validation writes nothing.
    """
    import yaml

    from ..artifacts import RECIPE_NAME, atomic_write, remove_run_artifacts
    from ..rundir import environment

    args = recipe.training
    if args.process_index != 0:
        return
    os.makedirs(args.output_dir, exist_ok=True)
    if recipe.run.overwrite_output_dir and args.resume_from_checkpoint is None:
        removed = remove_run_artifacts(args.output_dir)
        if removed:
            logger.info("overwrite_output_dir: removed the previous run's %s", ", ".join(removed))
    versions = ", ".join(f"{name} {version}" for name, version in environment().items())
    recipe_text = f"# Resolved recipe of this run ({versions}).\n" + yaml.safe_dump(recipe.resolved(), sort_keys=True)

    def write_recipe(path):
        with open(path, "w") as f:
            f.write(recipe_text)

    atomic_write(os.path.join(args.output_dir, RECIPE_NAME), write_recipe)


def _run_choice(recipe) -> dict:
    import datasets
    import torch

    from ..artifacts import staged_final_files
    from ..choice import ChoiceCollator, choice_rows, format_examples
    from ..choice.collator import count_truncated
    from ..evaluation.metrics import calibration_metrics
    from ..modeling import check_lora_targets, check_quantization_support, load_tokenizer
    from ..tasks import get_protocol, load_split

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
    truncated = {key: count_truncated(tokenizer, examples, data_args.max_length, f"{data_args.dataset} {split.split}")
                 for key, examples, split in (("train", train_examples, train_split), ("eval", eval_examples, eval_split))}
    collator(choice_rows(train_examples[:1] + eval_examples[:1]))  # resolves the answer tokens, or fails now
    logger.info("%s: %d train / %d eval examples", data_args.dataset, len(train_examples), len(eval_examples))
    check_lora_targets(model_args, tokenizer)  # from the model's config: before its weights load
    start = _starting_point(recipe)

    model = _load_model(recipe, tokenizer, start)
    _start_output_dir(recipe)

    def compute_metrics(prediction):
        logits = torch.as_tensor(prediction.predictions).double()
        return calibration_metrics(torch.softmax(logits, dim=-1), torch.as_tensor(prediction.label_ids),
                                   ece_edges=preset.ece_edges)  # fmt: skip

    trainer = trainer_class(recipe.objective)(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(choice_rows(train_examples)),
        eval_dataset=datasets.Dataset.from_list(choice_rows(eval_examples)),
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        **_trainer_kwargs(start),
    )
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    # The final files are staged whole and then moved in (see artifacts.staged_final_files): a kill never leaves
    # half of them beside the previous run's.
    with staged_final_files(args.output_dir, write=args.process_index == 0) as final_dir:
        report = _finish(trainer, final_dir, recipe, preset, train_split, eval_split, eval_examples, tokenizer,
                         truncated, train_result, start)  # fmt: skip
    return report


def _finish(trainer, final_dir, recipe, preset, train_split, eval_split, eval_examples, tokenizer, truncated,
            train_result, start=None) -> dict:  # fmt: skip
    """Save the adapter and posterior into `final_dir`, score them, write metrics, predictions and diagnostics."""
    from ..artifacts import METRICS_NAME, PREDICTIONS_NAME, write_json_atomic
    from ..evaluation.predict import predict, protocol
    from ..evaluation.report import write_jsonl
    from ..model_card import write_run_card
    from ..posterior import PRIOR_RUN_KEY, Posterior
    from ..rundir import environment

    data_args, run_args, args = recipe.data, recipe.run, recipe.training
    trainer.save_model(final_dir)  # adapter, tokenizer and (IVON) posterior
    trainer.accelerator.wait_for_everyone()  # every rank reads what the main process saved

    # The reported numbers come from the saved artifact, so they are what a user reloading it gets. Every rank
    # scores its shard of the examples; all of them receive the gathered probabilities.
    posterior = Posterior.load(final_dir) if trainer.ivon_optimizer is not None else None
    num_samples = run_args.final_eval_samples if posterior is not None else 0
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
    metrics = predictions.metrics(ece_bins, ece_edges=preset.ece_edges)
    report = {
        "task": data_args.dataset,
        "split": data_args.eval_split,
        "optimizer": args.optim,
        "protocol": protocol(preset, num_samples, ece_bins, recipe.model.answer_scoring),
        "data": {"train": {**train_split.as_dict(), "truncated": truncated["train"]},
                 "eval": {**eval_split.as_dict(), "truncated": truncated["eval"]}},
        "metrics": metrics,
        "train": train_result.metrics,
        **({PRIOR_RUN_KEY: start.provenance} if start is not None else {}),
        "environment": environment(),
        "recipe": recipe.resolved(),
    }
    diagnostics = None
    if posterior is not None:
        from ..diagnostics import diagnose

        diagnostics = diagnose(posterior, predictions.mean, predictions.samples)
        report["diagnostics"] = {"predictive": diagnostics.get("predictive"), "warnings": diagnostics["warnings"],
                                 "hess_at_init_share": diagnostics["posterior"]["hess_at_init_share"]}  # fmt: skip
    if args.process_index == 0:
        write_jsonl(os.path.join(final_dir, PREDICTIONS_NAME), predictions.rows())
        write_json_atomic(os.path.join(final_dir, METRICS_NAME), report)
        write_run_card(final_dir, args.output_dir, report)
        _log_summary(metrics, ece_bins)
        if diagnostics is not None:
            from ..diagnostics import log_summary, write_diagnostics

            write_diagnostics(final_dir, diagnostics, f"{data_args.dataset} ({os.path.basename(args.output_dir)})")
            log_summary(diagnostics, logger)
    return report


def _run_sft(recipe) -> dict:
    """objective: sft: rows -> TRL's SFT with IVON -> adapter, posterior, validation loss/perplexity at the mean and
    of the S-sample predictive (metrics.json), diagnostics."""
    from ..artifacts import METRICS_NAME, staged_final_files, write_json_atomic
    from ..model_card import write_run_card
    from ..modeling import check_lora_targets, check_quantization_support, load_tokenizer
    from ..posterior import PRIOR_RUN_KEY, Posterior
    from ..rundir import environment
    from ..sft.data import check_chat_template, load_sft_split
    from ..sft.likelihood import predictive_losses

    model_args, data_args, run_args, args = recipe.model, recipe.data, recipe.run, recipe.training
    # Data and tokenizer first: a bad row fails before the model loads and before output_dir is written.
    train_split = load_sft_split(data_args.dataset, data_args.train_split, data_args.train_file,
                                 config_name=data_args.dataset_config, max_samples=data_args.max_train_samples)
    eval_split = load_sft_split(data_args.dataset, data_args.eval_split, data_args.eval_file,
                                config_name=data_args.dataset_config, max_samples=data_args.max_eval_samples)
    check_quantization_support(model_args)
    tokenizer = load_tokenizer(model_args)
    for split in (train_split, eval_split):
        check_chat_template(split, tokenizer, model_args.model_name_or_path, args.chat_template_path)
    logger.info("%s: %d train / %d eval rows", train_split.source, len(train_split.dataset), len(eval_split.dataset))
    check_lora_targets(model_args, tokenizer)
    start = _starting_point(recipe)

    model = _load_model(recipe, tokenizer, start)
    _start_output_dir(recipe)
    trainer = trainer_class("sft")(
        model=model, args=args, train_dataset=train_split.dataset, eval_dataset=eval_split.dataset,
        processing_class=tokenizer, **_trainer_kwargs(start),
    )  # fmt: skip
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    with staged_final_files(args.output_dir, write=args.process_index == 0) as final_dir:
        trainer.save_model(final_dir)  # adapter, tokenizer and (IVON) posterior
        trainer.accelerator.wait_for_everyone()
        # Scored from the saved artifact, as a user reloading it gets it.
        posterior = Posterior.load(final_dir) if trainer.ivon_optimizer is not None else None
        num_samples = run_args.final_eval_samples if posterior is not None else 0
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics = predictive_losses(model, trainer.evaluation_batches(), posterior, num_samples,
                                    run_args.eval_seed, **trainer.document_gathering())  # fmt: skip
        report = {
            "objective": "sft",
            "dataset": eval_split.source,
            "split": eval_split.split,
            "optimizer": args.optim,
            "protocol": {"unit": "sequence", "num_samples": num_samples, "seed": run_args.eval_seed,
                         "loss": "nats per target token of the predictive; sampled: -log mean_s p_s(y|x), summed over "
                                 "documents, over the target tokens"},  # fmt: skip
            "data": {"train": train_split.as_dict(), "eval": eval_split.as_dict()},
            "metrics": metrics,
            "train": train_result.metrics,
            **({PRIOR_RUN_KEY: start.provenance} if start is not None else {}),
            "environment": environment(),
            "recipe": recipe.resolved(),
        }
        if posterior is not None:
            from ..diagnostics import diagnose, log_summary, write_diagnostics

            diagnostics = diagnose(posterior)
            report["diagnostics"] = {"warnings": diagnostics["warnings"],
                                     "hess_at_init_share": diagnostics["posterior"]["hess_at_init_share"]}  # fmt: skip
        if args.process_index == 0:
            write_json_atomic(os.path.join(final_dir, METRICS_NAME), report)
            write_run_card(final_dir, args.output_dir, report)
            for name, values in metrics.items():
                extra = f" (expected over samples {values['expected_loss']:.4f})" if name == "sampled" else ""
                label = f"{values['samples']} samples" if name == "sampled" else name
                logger.info("%-10s loss %.4f perplexity %.3f%s", label, values["loss"], values["perplexity"], extra)
            if posterior is not None:
                write_diagnostics(final_dir, diagnostics, f"{eval_split.source} ({os.path.basename(args.output_dir)})")
                log_summary(diagnostics, logger)
    return report


def _log_summary(metrics: dict, ece_bins) -> None:
    from ..evaluation.plots import summary_line

    rows = [("mean", metrics["mean"])]
    if "sampled" in metrics:
        rows.append((f"{metrics['sampled']['samples']} samples", metrics["sampled"]))
    for name, m in rows:
        logger.info("%-10s %s", name, summary_line(m, ece_bins))
