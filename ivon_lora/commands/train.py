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
    """The Trainer class `main` trains `objective` with (its record's; a seam for tests that interrupt a run)."""
    from ..objectives import get_objective

    return get_objective(objective).part("trainer")


def main(recipe) -> int:
    run_train(recipe)
    return 0


def run_train(recipe) -> dict:
    """Train `recipe`; returns what metrics.json holds. One pipeline for every objective: what differs is the
    objective's train steps (`ivon_lora.commands.training`)."""
    from ..output_dir import staged_final_files
    from ..modeling import check_lora_targets, check_quantization_support, load_tokenizer
    from ..objectives import get_objective

    steps = get_objective(recipe.objective).part("steps")(recipe)
    args = recipe.training
    # Data and tokenizer first: a bad record fails before the model loads and before output_dir is written.
    steps.load_data()
    check_quantization_support(recipe.model)
    tokenizer = load_tokenizer(recipe.model)
    steps.prepare(tokenizer)
    check_lora_targets(recipe.model, tokenizer)  # from the model's config: before its weights load

    start = _starting_point(recipe)

    model = _load_model(recipe, tokenizer, start)
    _start_output_dir(recipe)
    trainer = trainer_class(recipe.objective)(model=model, args=args, processing_class=tokenizer,
                                              **steps.trainer_inputs(), **_trainer_kwargs(start))  # fmt: skip
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    # The final files are staged whole and then moved in (see output_dir.staged_final_files): a kill never leaves
    # half of them beside the previous run's.
    with staged_final_files(args.output_dir, write=args.process_index == 0) as final_dir:
        return _finish(trainer, final_dir, recipe, steps, train_result, start)


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

    from ..fileio import atomic_write
    from ..filenames import RECIPE_NAME
    from ..output_dir import remove_run_artifacts
    from ..rundir import environment, environment_text

    args = recipe.training
    if args.process_index != 0:
        return
    os.makedirs(args.output_dir, exist_ok=True)
    if recipe.run.overwrite_output_dir and args.resume_from_checkpoint is None:
        removed = remove_run_artifacts(args.output_dir)
        if removed:
            logger.info("overwrite_output_dir: removed the previous run's %s", ", ".join(removed))
    versions = environment_text(environment())
    recipe_text = f"# Resolved recipe of this run ({versions}).\n" + yaml.safe_dump(recipe.resolved(), sort_keys=True)

    def write_recipe(path):
        with open(path, "w") as f:
            f.write(recipe_text)

    atomic_write(os.path.join(args.output_dir, RECIPE_NAME), write_recipe)


def _finish(trainer, final_dir, recipe, steps, train_result, start=None) -> dict:
    """Save the adapter and posterior into `final_dir`, score them, write metrics, the model card and diagnostics."""
    from ..fileio import write_json_atomic
    from ..filenames import METRICS_NAME
    from ..model_card import write_run_card
    from ..posterior import PRIOR_RUN_KEY, Posterior
    from ..rundir import environment

    run_args, args = recipe.run, recipe.training
    trainer.save_model(final_dir)  # adapter, tokenizer and (IVON) posterior
    trainer.accelerator.wait_for_everyone()  # every rank reads what the main process saved

    # The reported numbers come from the saved artifact, so they are what a user reloading it gets.
    posterior = Posterior.load(final_dir) if trainer.ivon_optimizer is not None else None
    num_samples = run_args.final_eval_samples if posterior is not None else 0
    scored = steps.score(trainer, trainer.accelerator.unwrap_model(trainer.model), posterior, num_samples)
    head = {key: value for key, value in scored.items() if key not in ("protocol", "data", "metrics")}
    report = {**head, "optimizer": args.optim, "protocol": scored["protocol"], "data": scored["data"],
              "metrics": scored["metrics"], "train": train_result.metrics,
              **({PRIOR_RUN_KEY: start.provenance} if start is not None else {}),
              "environment": environment(), "recipe": recipe.resolved()}  # fmt: skip
    diagnostics = None
    if posterior is not None:
        diagnostics, report["diagnostics"] = steps.diagnostics(posterior)
    if args.process_index == 0:
        steps.write(final_dir)
        write_json_atomic(os.path.join(final_dir, METRICS_NAME), report)
        write_run_card(final_dir, args.output_dir, report)
        steps.log_metrics()
        if diagnostics is not None:
            from ..diagnostics import log_summary, write_diagnostics

            write_diagnostics(final_dir, diagnostics, f"{steps.describe_run()} ({os.path.basename(args.output_dir)})")
            log_summary(diagnostics, logger)
    return report
