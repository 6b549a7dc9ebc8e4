"""The posterior's files in a run dir, each reader beside its writer: `posterior.safetensors` (one variance tensor per
adapter tensor, under the same key) and `posterior_config.json` (ess, prior precision, step, hyperparameters, the
adapter's LoRA settings and hash, any test-time transformation), with the adapter weights as the mean. The format
version is here, where it is written and checked."""

from __future__ import annotations

import json
import os
import warnings

import torch

from .._version import __version__
from ..errors import RunDirError
from ..fileio import atomic_write, read_json, read_tensors, write_tensors
from ..filenames import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, POSTERIOR_WEIGHTS_NAME
from ..output_dir import check_run_files
from .adapter import adapter_hash, adapter_settings

# The posterior format this version writes; older ones in COMPATIBLE_FORMAT_VERSIONS load with a warning.
FORMAT_VERSION = 2
COMPATIBLE_FORMAT_VERSIONS = (1, 2)
# posterior_config.json's record of the adapter it was saved with (`adapter_hash`).
ADAPTER_HASH_KEY = "adapter_sha256"
# posterior_config.json's (and the reports') record of the run whose adapter / posterior this run started from
# (`ivon_lora.continual`).
PRIOR_RUN_KEY = "prior_run"


def read_posterior(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(mean, variance, config) of a run, checkpoint or pruned dir, checked to belong together: same LoRA settings,
    the adapter the posterior was saved with (its hash), finite values, variances >= 0 (`Posterior.load`)."""
    check_run_files(directory)
    paths = {
        n: os.path.join(directory, n) for n in (ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME)
    }
    for name, path in paths.items():
        if not os.path.isfile(path):
            what = "adapter" if name == ADAPTER_WEIGHTS_NAME else "posterior (was it trained with optim=ivon?)"
            raise FileNotFoundError(f"No {what} in {directory!r}: {name} is missing")
    config = read_json(paths[POSTERIOR_CONFIG_NAME])
    version = config.get("format_version")
    if version not in COMPATIBLE_FORMAT_VERSIONS:
        raise RunDirError(
            f"{paths[POSTERIOR_CONFIG_NAME]}: unsupported format_version {version!r}; this ivon-lora "
            f"({__version__}) reads versions {', '.join(map(str, COMPATIBLE_FORMAT_VERSIONS))}. Upgrade ivon-lora "
            "to read it."
        )
    if version != FORMAT_VERSION:
        warnings.warn(
            f"{paths[POSTERIOR_CONFIG_NAME]} has the older format_version {version} (current: {FORMAT_VERSION}); "
            "it loads, but records less (no per-group ess / weight decay, library version or adapter name).",
            stacklevel=3,  # the caller of Posterior.load
        )
    adapter_config_path = os.path.join(directory, ADAPTER_CONFIG_NAME)
    if "adapter" in config and os.path.isfile(adapter_config_path):
        adapter = adapter_settings(read_json(adapter_config_path))
        if adapter != config["adapter"]:
            raise RunDirError(
                f"{directory}: the adapter ({adapter}) and the posterior ({config['adapter']}) come from "
                "different LoRA settings"
            )
    mean, variance = read_tensors(paths[ADAPTER_WEIGHTS_NAME]), read_tensors(paths[POSTERIOR_WEIGHTS_NAME])
    recorded = config.pop(ADAPTER_HASH_KEY, None)  # a record of the files, not of the posterior
    if recorded is not None and recorded != adapter_hash(mean):
        raise RunDirError(
            f"{paths[ADAPTER_WEIGHTS_NAME]} is not the adapter the posterior in {directory} was saved with "
            f"({POSTERIOR_CONFIG_NAME} records another {ADAPTER_HASH_KEY}): the dir mixes files of two runs; "
            "retrain into an empty output_dir"
        )
    negative = [key for key, v in variance.items() if bool((v < 0).any())]
    if negative:
        raise RunDirError(f"{paths[POSTERIOR_WEIGHTS_NAME]}: negative variances in {negative[:3]}")
    return mean, variance, config


def write_posterior(directory: str, mean: dict, variance: dict, config: dict, include_mean: bool = False) -> None:
    """Write posterior.safetensors and posterior_config.json (recording the adapter's hash) and, with
    `include_mean`, the mean as the adapter's weights; each atomically (`Posterior.save`)."""
    os.makedirs(directory, exist_ok=True)
    if not all(bool(t.isfinite().all()) for t in [*mean.values(), *variance.values()]):
        raise FloatingPointError(f"Not saving a posterior with NaN or inf values into {directory}")
    config = {**config, ADAPTER_HASH_KEY: adapter_hash(mean)}  # loading checks the adapter beside it
    write_tensors(os.path.join(directory, POSTERIOR_WEIGHTS_NAME), variance, metadata={"format": "pt"})
    if include_mean:
        write_tensors(os.path.join(directory, ADAPTER_WEIGHTS_NAME), mean, metadata={"format": "pt"})

    def write_config(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    atomic_write(os.path.join(directory, POSTERIOR_CONFIG_NAME), write_config)
