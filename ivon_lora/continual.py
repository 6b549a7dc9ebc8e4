"""Continual finetuning: start a run from a previous run's adapter, with (`prior_from`) or without (`init_from`) its
posterior as the prior.

An IVON run ends with the posterior N(m_A, 1 / (ess_A * (h_A + wd_A))). Trained on new data with that posterior as
the prior (mean m_A, per-entry precision p0 = ess_A * (h_A + wd_A) / ess_B on the scale of weight decay,
`IVON.set_prior`), the next run does Bayesian updating: on a linear-Gaussian problem, A then B equals A and B
together (tests/optim/test_optim_prior.py). `prior_scale` multiplies p0 (below 1: a wider, tempered prior).

`load_starting_point(recipe)` reads and checks the previous run before any model loads (one clear line for a
missing or damaged run, an AdamW run as prior, another base model, other LoRA targets, rank or alpha);
`apply_starting_point(model, start)` copies its adapter into the new model; the Trainer gets `start.prior` and sets
the optimizer's prior from it (`IVONTrainerMixin`, `prior=`). `start.provenance` goes into the new
posterior_config.json and the reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .fileio import read_tensors
from .filenames import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME
from .output_dir import check_run_files
from .errors import RecipeError, RunDirError

# Recipe keys that must agree between the previous run and the new one (the adapter's shape and the base model).
MATCHING_KEYS = ("model_name_or_path", "gguf_file", "lora_rank", "lora_alpha", "lora_target")


@dataclass(frozen=True)
class StartingPoint:
    """A previous run's adapter (`mean`) and, with prior_from, its posterior tempered by prior_scale (`prior`)."""

    key: str  # the recipe key that named it: prior_from or init_from
    mean: dict[str, torch.Tensor]
    prior: object | None  # ivon_lora.posterior.Posterior
    provenance: dict


def load_starting_point(recipe) -> StartingPoint | None:
    """The run named by the recipe's prior_from / init_from, checked against the recipe; None if neither is set."""
    run = recipe.run
    key = "prior_from" if run.prior_from is not None else "init_from" if run.init_from is not None else None
    if key is None:
        return None
    directory = getattr(run, key)
    where = f"Recipe key {key!r}: {directory!r}"
    from .rundir import optimizer_name

    if key == "prior_from" and optimizer_name(recipe) != "ivon":
        raise RecipeError(f"{where} needs optim: ivon (the prior is an IVON posterior); to start "
                          f"{optimizer_name(recipe)} from that run's adapter, use init_from")  # fmt: skip
    if key == "prior_from" and getattr(recipe.training, "ivon_mean_weight_decay", None) is not None:
        raise RecipeError(f"{where} cannot be combined with ivon_mean_weight_decay (the decoupled decay of the scalar "
                          "prior): the prior's precision enters the mean update itself. Leave it unset")  # fmt: skip
    previous = _previous_recipe(directory, where)
    _check_matching(recipe, previous, where)
    has_posterior = os.path.isfile(os.path.join(directory, POSTERIOR_WEIGHTS_NAME))
    provenance = {"key": key, "run_dir": os.path.abspath(directory), "optimizer": optimizer_name(previous)}
    if key == "init_from" or not has_posterior:
        if key == "prior_from":
            raise RecipeError(f"{where} has no posterior ({POSTERIOR_WEIGHTS_NAME}): it was trained with optim: "
                              f"{optimizer_name(previous)}, not ivon. Use init_from to start from its adapter without "
                              "a prior")  # fmt: skip
        mean = _read_adapter(directory, where)
        from .posterior import adapter_hash

        return StartingPoint(key, mean, None, {**provenance, "adapter_sha256": adapter_hash(mean)})
    prior = _read_posterior(directory, where)
    scaled = prior.with_temperature(run.prior_scale) if run.prior_scale != 1.0 else prior
    from .posterior import adapter_hash

    provenance.update({"adapter_sha256": adapter_hash(prior.mean), "ess": prior.config.get("ess"),
                       "weight_decay": prior.config.get("weight_decay"), "step": prior.config.get("step"),
                       "prior_scale": run.prior_scale})  # fmt: skip
    return StartingPoint(key, prior.mean, scaled, provenance)


def _previous_recipe(directory: str, where: str):
    from .config import load_recipe
    from .rundir import find_recipe

    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise RecipeError(f"{where} is a file, not a run dir: name the dir of ivon-lora train that holds "
                          f"{ADAPTER_WEIGHTS_NAME} (or one of its checkpoint-N dirs)")  # fmt: skip
    if not os.path.isdir(directory):
        raise RecipeError(f"{where} does not exist (a run dir of ivon-lora train, or one of its checkpoint-N dirs)")
    try:
        check_run_files(directory)
    except RunDirError as error:
        raise RecipeError(f"{where}: {error}") from None
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not os.path.isfile(os.path.join(directory, name)):
            raise RecipeError(f"{where} is not a finished run or checkpoint dir: {name} is missing")
    path = find_recipe(directory)
    if path is None:
        raise RecipeError(f"{where} has no recipe.yaml (nor its parent): the base model and LoRA settings it was "
                          "trained with are unknown")  # fmt: skip
    try:
        return load_recipe(path, for_training=False)
    except RecipeError as error:
        raise RecipeError(f"{where}: its recipe does not load: {error}") from None


def _check_matching(recipe, previous, where: str) -> None:
    """The base model and the adapter's shape (targets, rank, alpha) must be the previous run's."""
    for name in MATCHING_KEYS:
        new, old = getattr(recipe.model, name), getattr(previous.model, name)
        if name == "lora_target":
            new, old = sorted(new), sorted(old)
        if new != old:
            raise RecipeError(
                f"{where} was trained with {name}: {old!r}, this recipe has {new!r}; a run can only start "
                f"from an adapter of the same base model and LoRA shape ({', '.join(MATCHING_KEYS)})"
            )


def _read_adapter(directory: str, where: str) -> dict[str, torch.Tensor]:
    try:
        mean = read_tensors(os.path.join(directory, ADAPTER_WEIGHTS_NAME))
    except Exception as error:  # a truncated or foreign file: name it, before the model loads
        raise RecipeError(f"{where}: {ADAPTER_WEIGHTS_NAME} does not load: {error}") from None
    bad = [key for key, value in mean.items() if not bool(value.isfinite().all())]
    if bad:
        raise RecipeError(f"{where}: the adapter holds NaN or inf values in {bad[:3]}")
    return {key: value.float() for key, value in mean.items()}


def _read_posterior(directory: str, where: str):
    from .errors import RunDirError
    from .posterior import Posterior

    try:
        posterior = Posterior.load(directory)
    except (RunDirError, FileNotFoundError, ValueError) as error:
        raise RecipeError(f"{where}: {error}") from None
    if posterior.config.get("temperature") is not None or posterior.config.get("pruning"):
        raise RecipeError(f"{where} holds a pruned or tempered posterior: use the run it was derived from, and "
                          "prior_scale to temper the prior")  # fmt: skip
    bad = [key for key, v in posterior.variance.items() if not bool((v > 0).all())]
    if bad:
        raise RecipeError(f"{where}: the posterior has zero variances in {bad[:3]} (an infinitely sure prior)")
    return posterior


def apply_starting_point(model, start: StartingPoint) -> None:
    """Copy the previous run's adapter into `model`'s (same keys and shapes, or an error naming them)."""
    from .posterior import adapter_parameters

    params = adapter_parameters(model)
    missing, unexpected = sorted(set(params) - set(start.mean)), sorted(set(start.mean) - set(params))
    if missing or unexpected:
        raise RecipeError(f"Recipe key {start.key!r}: the previous adapter does not fit this model's: missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}")  # fmt: skip
    with torch.no_grad():
        for key, p in params.items():
            if p.shape != start.mean[key].shape:
                raise RecipeError(f"Recipe key {start.key!r}: {key} has shape {tuple(start.mean[key].shape)} in the "
                                  f"previous adapter, {tuple(p.shape)} here")  # fmt: skip
            p.copy_(start.mean[key])


def started_from(run) -> dict:
    """A loaded run's record of the run it started from, for reports: {PRIOR_RUN_KEY: ...}, or {} if none.

    IVON runs carry it in posterior_config.json (with the adapter hash and ess); other runs name the dir in their
    recipe's init_from.
    """
    from .posterior import PRIOR_RUN_KEY

    if run.posterior is not None and PRIOR_RUN_KEY in run.posterior.config:
        return {PRIOR_RUN_KEY: run.posterior.config[PRIOR_RUN_KEY]}
    recipe = run.recipe
    for key in ("prior_from", "init_from"):
        directory = getattr(recipe.run, key, None) if recipe is not None else None
        if directory is not None:
            return {PRIOR_RUN_KEY: {"key": key, "run_dir": os.path.abspath(directory)}}
    return {}
