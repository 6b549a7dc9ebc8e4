"""`ivon-lora export`: the posterior-mean adapter merged into the base model, with its posterior and a model card."""

from __future__ import annotations

import argparse
import logging
import os
import shutil

from ..fileio import read_json
from ..filenames import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    EXPORT_POSTERIOR_DIR,
    METRICS_NAME,
    MODEL_CARD_NAME,
    POSTERIOR_CONFIG_NAME,
    POSTERIOR_WEIGHTS_NAME,
)
from ..output_dir import claim_output_dir, staged_output_dir
from ..config import ExportConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)


CONFIG_CLASS = ExportConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "export",
        help="Merge a run's (optionally pruned) posterior-mean adapter into the base model for deployment.",
        description="Save RUN_DIR's base model with the adapter merged, its posterior and a model card to --out. "
                    "Options also come from a YAML CONFIG and key=value (keys: the flags with _ for -).",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> ExportConfig:
    return config_from_options(options, CONFIG_CLASS, "export")


def main(config) -> int:
    """Export as `config` (an `ivon_lora.config.ExportConfig`) says."""
    export_run(config.run_dir, config.out, config.overwrite, config.trust_remote_code)
    return 0


def model_card(run, metrics: dict | None) -> str:
    """The model card (README.md) of an exported `ivon_lora.rundir.Run`."""
    from ..config import load_recipe
    from ..model_card import base_model_text, command_line, front_matter
    from ..objectives import get_objective

    base = run.model_args.model_name_or_path
    lines = [
        *front_matter(base, "transformers"),
        f"# {os.path.basename(os.path.abspath(run.directory))} (merged)",
        "",
        f"The posterior mean of an IVON-trained LoRA adapter on {base_model_text(base)}, merged into the base",
        "weights. The full",
        "posterior (adapter + per-weight variance) is in `posterior/`: load it with `ivon_lora.Posterior.load` to",
        "sample, prune or evaluate with posterior averaging.",
    ]
    if run.posterior is not None:
        config = run.posterior.config
        lines += ["", "## Posterior", "", f"- optimizer steps: {config.get('step')}; ess: {config.get('ess')}; "
                  f"prior precision: {config.get('weight_decay')}"]  # fmt: skip
        for pruning in config.get("pruning", []):
            lines.append(f"- pruned {pruning['num_pruned']} of {pruning['num_entries']} entries "
                         f"({pruning['scope']}, {pruning['mode']}, by {pruning['criterion']})")  # fmt: skip
        if "temperature" in config:
            lines.append(f"- test-time temperature: {config['temperature']}")
    if metrics is not None:
        # metrics.json names its objective where it is not the default (an SFT run's: "objective": "sft").
        steps = get_objective(metrics.get("objective", "choice")).part("steps")
        lines += steps.card_lines(metrics, run.posterior is not None)
    if run.recipe is not None:
        import yaml

        resolved = run.recipe.resolved()
        required = ["model_name_or_path=_", "output_dir=_", f"objective={run.recipe.objective}"]
        required += [f"{key}=_" for key in get_objective(run.recipe.objective).required_keys]
        defaults = load_recipe(None, required, for_training=False).resolved()
        always = ("model_name_or_path", "objective")
        changed = {k: v for k, v in resolved.items() if v != defaults.get(k) or k in always}
        changed.pop("output_dir", None)
        lines += ["", "## Recipe (keys that differ from the defaults)", "", "```yaml",
                  yaml.safe_dump(changed, sort_keys=True).strip(), "```"]  # fmt: skip
    lines += ["", "## Load and sample", "", "```python", "from transformers import AutoModelForCausalLM", "",
              'model = AutoModelForCausalLM.from_pretrained(".")  # the posterior mean, merged', "",
              "from ivon_lora import Posterior", "", 'posterior = Posterior.load("posterior")  # adapter + variance: '
              "sample it on the unmerged base (ivon_lora.load_run on the run dir)", "```",
              "", "## Made with", "", "```bash", command_line(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def export_run(directory: str, out: str, overwrite: bool = False, trust_remote_code: bool = False) -> None:
    """Merge the adapter's (posterior) mean into the base model and save it with its posterior and a model card."""
    from ..rundir import load_run

    claim_output_dir(out, "export", overwrite, {"run dir": directory})
    run = load_run(directory, trust_remote_code)
    metrics_path = os.path.join(directory, METRICS_NAME)
    metrics = read_json(metrics_path) if os.path.isfile(metrics_path) else None
    card = model_card(run, metrics)
    with staged_output_dir(out, "export") as staging:
        posterior_dir = os.path.join(staging, EXPORT_POSTERIOR_DIR)
        os.makedirs(posterior_dir)
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME):
            if os.path.isfile(os.path.join(directory, name)):
                shutil.copy2(os.path.join(directory, name), os.path.join(posterior_dir, name))
        run.model.merge_and_unload().save_pretrained(staging, safe_serialization=True)
        run.tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MODEL_CARD_NAME), "w") as f:
            f.write(card)
    logger.info("exported the merged model to %s", out)
