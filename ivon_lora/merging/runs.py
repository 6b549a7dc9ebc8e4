"""Merging run dirs: read and check the inputs (no model loads), merge their adapters by a method, write the merged
run dir (PEFT adapter, posterior where the method defines one, recipe, provenance, model card), staged and swapped.

Methods (`METHODS`):
- `uncertainty`: gradient matching (Daheim et al.), H_t = each run's posterior precision, H₀ = `base_precision` times
  the inputs' mean precision of each matrix (0: precision-weighted averaging; large: task arithmetic);
- `posterior`: the weighted product of the runs' posteriors (arXiv 2412.08147), S₀ = the runs' prior precision
  ess·weight_decay in factor space, and in delta space the precision that prior implies for an entry of ΔW,
  (ess·weight_decay)² / (scaling²·r);
- PEFT's combination types (`linear`, `cat`, `svd`, `ties`, `dare_ties`, ...), through `add_weighted_adapter`.

`uncertainty` and `posterior` merge in one of two spaces (`space`):
- `delta` (default): each run's ΔW = scaling·B·A with the elementwise variance its factor posteriors imply, merged per
  entry, then back to LoRA factors by a truncated SVD of rank `rank` (default: the sum of the input ranks, which holds
  any sum of the inputs' updates exactly);
- `factor`: A and B merged separately, entry by entry, with their own precisions (as PEFT's `linear` does with
  weights): only meaningful when the runs share the factors' basis, which separate runs do not.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import torch

from ..fileio import read_json, read_tensors, write_json_atomic
from ..filenames import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MERGE_NAME, MODEL_CARD_NAME, RECIPE_NAME
from ..errors import UsageError
from ..vocabulary import MERGE_METHODS, MERGE_POSTERIOR_METHODS, MERGE_SPACES
from ..lora_update import delta_moments
from .gaussian import gradient_matching, low_rank_factors, precision_of, product_of_gaussians
from .peft_types import DENSITY_TYPES, PEFT_TYPES, SAME_RANK_TYPES, factor_keys, module_paths, peft_merge

logger = logging.getLogger(__name__)

POSTERIOR_METHODS = MERGE_POSTERIOR_METHODS  # they need each run's posterior
METHODS = MERGE_METHODS  # POSTERIOR_METHODS, then PEFT_TYPES
SPACES = MERGE_SPACES


@dataclass
class MergeInput:
    """One input run dir, read without loading any model."""

    directory: str
    config: dict  # adapter_config.json
    tensors: dict[str, torch.Tensor]  # the adapter (the posterior mean for an IVON run)
    variance: dict[str, torch.Tensor] | None  # the posterior's, None without one (AdamW)
    posterior_config: dict | None
    recipe: object | None  # ivon_lora.config.Recipe

    @property
    def base(self) -> tuple[str, str | None]:
        name = self.recipe.model.model_name_or_path if self.recipe else self.config.get("base_model_name_or_path")
        return name, self.config.get("revision")

    @property
    def scaling(self) -> float:
        rank, alpha = self.config["r"], self.config["lora_alpha"]
        return alpha / (rank**0.5 if self.config.get("use_rslora") else rank)

    @property
    def task(self) -> str | None:
        return self.recipe.data.dataset if self.recipe else None

    @property
    def prior_precision(self) -> float:
        """IVON's prior precision ess·weight_decay (0 for weight decay 0)."""
        config = self.posterior_config or {}
        return float(config.get("ess") or 0.0) * float(config.get("weight_decay") or 0.0)

    @property
    def delta_prior_precision(self) -> float:
        """The precision that the prior N(0, 1/S₀) of each entry of A and B implies for an entry of ΔW = s·B·A:
        1 / Var = S₀² / (s²·r), moment-matched as `delta_moments` treats the posterior (0 without a prior)."""
        prior = self.prior_precision
        return prior * prior / (self.scaling**2 * self.config["r"]) if prior else 0.0

    def prior_in(self, space: str) -> float:
        return self.delta_prior_precision if space == "delta" else self.prior_precision


def read_input(directory: str) -> MergeInput:
    from ..posterior import Posterior
    from ..rundir import describe_run

    described = describe_run(directory, set())
    config = read_json(os.path.join(directory, ADAPTER_CONFIG_NAME))
    if described["has_posterior"]:
        posterior = Posterior.load(directory)
        tensors, variance, posterior_config = posterior.mean, posterior.variance, posterior.config
    else:
        tensors, variance, posterior_config = read_tensors(os.path.join(directory, ADAPTER_WEIGHTS_NAME)), None, None
    return MergeInput(described["dir"], config, tensors, variance, posterior_config, described["recipe"])


def check_weights(method: str, weights: list[float], count: int) -> None:
    """The weights α of a merge of `count` runs, before any file is read: one per run, finite, not all 0, and >= 0
    for `uncertainty` and `posterior`, which weigh each run's precision (a negative α has no posterior meaning there
    and can make the merged precision negative). PEFT's types take a negative α (task negation), with a warning."""
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not a merge method; choose from {', '.join(METHODS)}")
    if count < 2:
        raise UsageError("merge needs two or more run dirs")
    if len(weights) != count:
        raise UsageError(f"--weights has {len(weights)} values for {count} runs: give one per run")
    shown = " ".join(f"{w:g}" for w in weights)
    if not all(math.isfinite(w) for w in weights):
        raise UsageError(f"--weights {shown}: every weight must be a finite number")
    if not any(weights):
        raise UsageError(f"--weights {shown}: all weights are 0, which merges nothing; give each run its weight α")
    if method in POSTERIOR_METHODS and min(weights) < 0:
        raise UsageError(f"--weights {shown}: --method {method} weighs each run's posterior precision by its weight, "
                         "which must be >= 0; to subtract a run's update (task negation) use --method linear")  # fmt: skip
    if min(weights) < 0:
        logger.warning("--weights %s: a negative weight subtracts that run's update (task negation)", shown)
    if max(abs(w) for w in weights) > 1:
        logger.warning("--weights %s: a weight above 1 extrapolates beyond that run's own update", shown)


def check_inputs(
    inputs: list[MergeInput], method: str, space: str, weights: list[float], density: float | None
) -> None:
    """Every reason the inputs cannot be merged by `method`, as one line naming both runs, before any model loads."""
    check_weights(method, weights, len(inputs))
    if space not in SPACES:
        raise UsageError(f"--space {space!r}: choose from {', '.join(SPACES)}")
    from ..posterior import adapter_hash

    seen = {}
    for index, run in enumerate(inputs):
        twin = seen.setdefault(adapter_hash(run.tensors), index)
        if twin != index:
            logger.warning("%s and %s hold the same adapter: the merge counts it twice", inputs[twin].directory,
                           run.directory)  # fmt: skip
    if method in DENSITY_TYPES and not (density is not None and 0.0 < density <= 1.0):
        raise UsageError(f"--method {method} prunes: give --density in (0, 1] (the fraction of entries kept)")
    first = inputs[0]
    for other in inputs[1:]:
        pair = f"{first.directory} and {other.directory}"
        if first.base != other.base:
            raise UsageError(f"{pair} were trained on different base models: {first.base} vs {other.base}")
        targets = [sorted(run.config.get("target_modules") or []) for run in (first, other)]
        if targets[0] != targets[1]:
            raise UsageError(f"{pair} adapt different modules: {targets[0]} vs {targets[1]}")
        if module_paths(first.tensors) != module_paths(other.tensors):
            raise UsageError(f"{pair} adapt different layers (their adapter tensors have other keys)")
        for run in (first, other):
            if run.config.get("use_dora") or run.config.get("rank_pattern") or run.config.get("alpha_pattern"):
                raise UsageError(f"{run.directory}: DoRA and per-module rank/alpha patterns cannot be merged")
        factor_wise = method in SAME_RANK_TYPES or (method in POSTERIOR_METHODS and space == "factor")
        if factor_wise and first.config["r"] != other.config["r"]:
            raise UsageError(f"{pair} have ranks {first.config['r']} and {other.config['r']}: --method {method} "
                             f"{'--space factor ' if method in POSTERIOR_METHODS else ''}merges A and B separately and "
                             "needs equal ranks (use --space delta, cat or an *_svd type)")  # fmt: skip
        if method in POSTERIOR_METHODS and space == "factor" and first.scaling != other.scaling:
            raise UsageError(f"{pair} have LoRA scalings {first.scaling} and {other.scaling}: --space factor needs equal "
                             "lora_alpha / r (use --space delta)")  # fmt: skip
    if method in POSTERIOR_METHODS:
        missing = [run.directory for run in inputs if run.variance is None]
        if missing:
            raise UsageError(f"--method {method} weighs each entry by its posterior precision, and {', '.join(missing)} "
                             "has no posterior (not an IVON run): use a method that needs none (linear, ties, "
                             "dare_ties, ...) or merge IVON runs")  # fmt: skip
        priors = {run.prior_in(space) for run in inputs}
        if method == "posterior" and len(priors) > 1:
            what = "(ess·weight_decay)" if space == "factor" else "in ΔW ((ess·weight_decay)² / (scaling²·r))"
            raise UsageError(f"--method posterior needs one shared prior; the runs' prior precisions {what} differ: "
                             f"{sorted(priors)}")  # fmt: skip


def _merge_entries(method: str, means, variances, weights, base_precision: float, prior_precision: float):
    """(merged mean, merged precision or None) of one tensor under `method` (uncertainty / posterior)."""
    precisions = [precision_of(v) for v in variances]
    if method == "uncertainty":
        scale = float(torch.stack([p.mean() for p in precisions]).mean())
        return gradient_matching(means, precisions, weights, base_precision * scale), None
    return product_of_gaussians(means, precisions, weights, prior_precision)


def largest_rank(inputs: list[MergeInput]) -> int:
    """The largest rank a merged adapter of these layers can have: the smallest side of an adapted weight."""
    return min(min(inputs[0].tensors[factor_keys(path)[0]].shape[1], inputs[0].tensors[factor_keys(path)[1]].shape[0])
               for path in module_paths(inputs[0].tensors))  # fmt: skip


def merge_adapters(inputs: list[MergeInput], method: str, weights: list[float], space: str = "delta",
                   density: float | None = None, rank: int | None = None, base_precision: float = 0.0,
                   seed: int = 0) -> tuple[dict, dict, dict | None]:  # fmt: skip
    """The merged (adapter tensors, adapter config dict, posterior variances or None). No model, no files."""
    configs = [run.config for run in inputs]
    if method in PEFT_TYPES:
        tensors, config = peft_merge(configs, [run.tensors for run in inputs], weights, method, density, rank, seed)
        return tensors, config, None
    prior = inputs[0].prior_precision
    paths = module_paths(inputs[0].tensors)
    tensors, variance = {}, {}
    if space == "factor":
        for key in inputs[0].tensors:
            mean, precision = _merge_entries(method, [run.tensors[key] for run in inputs],
                                             [run.variance[key] for run in inputs], weights, base_precision, prior)  # fmt: skip
            tensors[key] = mean.float()
            if precision is not None:
                variance[key] = (1.0 / precision).float()
        return tensors, dict(configs[0]), (variance or None)
    out_rank = min(rank or sum(config["r"] for config in configs), largest_rank(inputs))
    for path in paths:
        a_key, b_key = factor_keys(path)
        moments = [delta_moments(run.tensors[a_key], run.variance[a_key], run.tensors[b_key], run.variance[b_key],
                                 run.scaling) for run in inputs]  # fmt: skip
        delta, _ = _merge_entries(method, [m for m, _ in moments], [v for _, v in moments], weights, base_precision,
                                  inputs[0].delta_prior_precision)  # fmt: skip
        a, b = low_rank_factors(delta, out_rank)
        tensors[a_key], tensors[b_key] = a.float(), b.float()
    config = {**configs[0], "r": out_rank, "lora_alpha": out_rank, "use_rslora": False}  # scaling 1, as PEFT's svd
    return tensors, config, None


def posterior_meaning(method: str, space: str) -> str | None:
    """What the merged dir's posterior is, or None where the method defines none over the adapter's tensors."""
    if method == "posterior" and space == "factor":
        return (
            "the weighted product of the inputs' factor posteriors: N(m_α, S_α⁻¹) per entry of A and B, the "
            "Gaussian a multitask run with loss weights α would reach if each input's posterior were exact"
        )
    return None


def _write_recipe(source: MergeInput, destination: str, config: dict, out: str) -> None:
    """The first input's recipe with the merged adapter's rank and alpha, so eval / generate / export rebuild it."""
    import yaml

    from ..config import read_yaml
    from ..rundir import find_recipe

    path = find_recipe(source.directory)
    if path is None:
        return
    values = read_yaml(path)
    values.update(lora_rank=int(config["r"]), lora_alpha=config["lora_alpha"], output_dir=os.path.abspath(out))
    with open(os.path.join(destination, RECIPE_NAME), "w") as f:
        f.write(f"# The recipe of {source.directory} (the merge's first input), with the merged adapter's rank.\n")
        yaml.safe_dump(values, f, sort_keys=True)


def _model_card(provenance: dict) -> str:
    lines = [
        f"# Merged LoRA adapter ({provenance['method']})",
        "",
        f"Made by `ivon-lora merge` (ivon-lora {provenance['environment'].get('ivon-lora')}) from:",
        "",
    ]
    for run, weight in zip(provenance["inputs"], provenance["weights"]):
        lines.append(f"- `{run['dir']}` (task {run['task']}, {run['optimizer']}), weight {weight}, adapter sha256 "
                     f"{run['adapter_sha256'][:16]}")  # fmt: skip
    lines += ["", f"Settings: {provenance['settings']}.", "",
              f"Posterior: {provenance['posterior'] or 'none (evaluate at the weights)'}.", "",
              f"Provenance in `{MERGE_NAME}`. Loads with `PeftModel.from_pretrained(base, this_dir)`.", ""]  # fmt: skip
    return "\n".join(lines)


def merge_runs(directories: list[str], method: str, weights: list[float] | None = None, out: str | None = None,
               space: str = "delta", density: float | None = None, rank: int | None = None,
               base_precision: float = 0.0, seed: int = 0, overwrite: bool = False) -> dict:  # fmt: skip
    """Merge the run dirs' adapters by `method` into the run dir `out` (when given); returns the provenance.

    Everything is checked (and one line names what is wrong) before any tensor is merged or any model loads.
    """
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..posterior import Posterior, adapter_hash, adapter_settings
    from ..rundir import environment, optimizer_name

    weights = list(weights) if weights is not None else [1.0 / len(directories)] * len(directories)
    check_weights(method, weights, len(directories))
    if not math.isfinite(base_precision) or base_precision < 0:
        raise UsageError(f"Invalid base_precision value: {base_precision!r} (must be a finite number >= 0; large "
                         "values approach task arithmetic)")  # fmt: skip
    if out is not None:
        claim_output_dir(out, "merge", overwrite, {f"input run {i + 1}": d for i, d in enumerate(directories)})
    inputs = [read_input(directory) for directory in directories]
    check_inputs(inputs, method, space, weights, density)
    if rank is not None and rank > largest_rank(inputs):
        logger.warning("--rank %d: the adapted layers allow rank %d at most, which the merge uses", rank,
                       largest_rank(inputs))  # fmt: skip
    logger.info("merging %s by %s, weights %s", " + ".join(run.directory for run in inputs), method, weights)
    start = time.perf_counter()
    tensors, config, variance = merge_adapters(inputs, method, weights, space, density, rank, base_precision, seed)
    seconds = time.perf_counter() - start
    _check_finite_merge(tensors, variance, method, weights)
    config["target_modules"] = sorted(config["target_modules"])
    provenance = {
        "method": method,
        "weights": weights,
        "settings": {"space": space if method in POSTERIOR_METHODS else None, "rank": config["r"],
                     "density": density if method in DENSITY_TYPES else None,
                     "base_precision": base_precision if method == "uncertainty" else None,
                     "prior_precision": inputs[0].prior_in(space) if method == "posterior" else None, "seed": seed},
        "inputs": [{"dir": run.directory, "task": run.task, "adapter_sha256": adapter_hash(run.tensors),
                    "optimizer": optimizer_name(run.recipe) if run.recipe else None,
                    "has_posterior": run.variance is not None} for run in inputs],
        "posterior": posterior_meaning(method, space) if variance is not None else None,
        "adapter_sha256": adapter_hash(tensors),
        "merge_seconds": seconds,
        "environment": environment(),
    }  # fmt: skip
    if out is None:
        return provenance
    with staged_output_dir(out, "merge") as staging:
        _write_merged_files(staging, inputs[0], tensors, config, variance, provenance, out)
        if variance is not None:
            first_config = inputs[0].posterior_config
            posterior_config = {"format_version": 2, "library": {"name": "ivon-lora", "version": provenance["environment"]["ivon-lora"]},
                                # The first input's ess and hyperparameters, so diagnostics read the width alike.
                                "optimizer": f"merge:{method}", "ess": first_config.get("ess"),
                                "weight_decay": first_config.get("weight_decay"),
                                "hyperparameters": first_config.get("hyperparameters", {}),
                                "step": max(run.posterior_config.get("step") or 0 for run in inputs),
                                "merge": {k: provenance[k] for k in ("method", "weights", "settings")},
                                "adapter": adapter_settings(config), "adapter_name": "default"}  # fmt: skip
            Posterior(tensors, variance, posterior_config).save(staging)
    logger.info("wrote %s (%.2f s to merge)", out, seconds)
    return provenance


def _check_finite_merge(tensors: dict, variance: dict | None, method: str, weights: list[float]) -> None:
    """A merge with NaN or inf values is never written (every later command would refuse the dir)."""
    bad = [key for part in (tensors, variance or {}) for key, value in part.items() if not bool(value.isfinite().all())]
    if bad:
        raise UsageError(f"--method {method} with --weights {' '.join(f'{w:g}' for w in weights)} gives NaN or inf "
                         f"values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: nothing was written; use "
                         "smaller weights or another method")  # fmt: skip


def _write_merged_files(staging: str, first: MergeInput, tensors: dict, config: dict, variance, provenance: dict,
                        out: str) -> None:  # fmt: skip
    from safetensors.torch import save_file

    from ..rundir import copy_run_files

    copy_run_files(first.directory, staging)  # tokenizer files; the adapter config and recipe are replaced below
    write_json_atomic(os.path.join(staging, ADAPTER_CONFIG_NAME), config, sort_keys=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(staging, ADAPTER_WEIGHTS_NAME),
              metadata={"format": "pt"})  # fmt: skip
    _write_recipe(first, staging, config, out)
    write_json_atomic(os.path.join(staging, MERGE_NAME), provenance)
    with open(os.path.join(staging, MODEL_CARD_NAME), "w") as f:
        f.write(_model_card(provenance))
