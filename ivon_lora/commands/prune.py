"""`ivon-lora prune`: a pruned (and optionally tempered) copy of a run's adapter + posterior; no model loads."""

from __future__ import annotations

import argparse
import logging

from ..output_dir import claim_output_dir, staged_output_dir
from ..posterior import Posterior
from ..config import PruneConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)


CONFIG_CLASS = PruneConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "prune",
        help="Prune the lowest signal-to-noise adapter entries of a run's posterior (test time).",
        description="Write a pruned copy of RUN_DIR's adapter and posterior to --out (PEFT and Posterior load it). "
                    "Options also come from a YAML CONFIG and key=value (keys: the flags with _ for -).",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> PruneConfig:
    return config_from_options(options, CONFIG_CLASS, "prune")


def main(config) -> int:
    """Prune as `config` (an `ivon_lora.config.PruneConfig`) says."""
    prune_run(config.run_dir, config.out, config.fraction, config.scope, config.mode, config.criterion,
              config.temperature, config.overwrite)  # fmt: skip
    return 0


def prune_run(directory: str, out: str, fraction: float, scope: str = "global", mode: str = "zero",
              criterion: str = "snr", temperature: float = 1.0, overwrite: bool = False) -> Posterior:  # fmt: skip
    """Write a pruned (and optionally tempered) copy of a run's adapter + posterior to `out`; no model needed."""
    from ..rundir import copy_run_files

    claim_output_dir(out, "prune", overwrite, {"run dir": directory})
    posterior = Posterior.load(directory).at_test_time(
        fraction, temperature, scope=scope, mode=mode, criterion=criterion
    )
    with staged_output_dir(out, "prune") as staging:
        copy_run_files(directory, staging)
        posterior.save(staging, include_mean=True)
    pruning = posterior.config["pruning"][-1]
    logger.info("pruned %d of %d adapter entries (%s, %s, %s) -> %s", pruning["num_pruned"], pruning["num_entries"],
                scope, mode, criterion, out)  # fmt: skip
    return posterior
