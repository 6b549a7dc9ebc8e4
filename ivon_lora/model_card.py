"""Model cards (README.md): the one `ivon-lora train` writes into a run dir in place of PEFT's blank card, and the
parts `ivon-lora export`'s card shares with it.

A card names the base model by its Hub id (a packaged model by the Hub original it was converted from; never a
machine-local cache path, which a user uploading the dir would publish), the task, the metrics at the posterior
mean and with S samples, the posterior's settings, how to load and sample it, and the command that made it.
"""

from __future__ import annotations

import os
import shlex
import sys

from .objectives import get_objective

_invocation: list[str] | None = None  # the ivon-lora command line of this process (`record_invocation`)


def record_invocation(argv: list[str]) -> None:
    """Remember the command line (`ivon-lora ARGV`) for the cards this process writes (cli.main calls it)."""
    global _invocation
    _invocation = list(argv)


def command_line() -> str:
    argv = _invocation if _invocation is not None else sys.argv[1:]
    return "ivon-lora " + shlex.join(argv) if _invocation is not None else shlex.join([sys.argv[0], *argv])


def base_model_id(name: str) -> str | None:
    """The Hub id of the base model `name` (a recipe's model_name_or_path), or None where it has none: a built-in
    random model, or a local dir (whose path describes this machine, not the model)."""
    from .builtin import BUILTIN_MODELS
    from .packaged import PACKAGED_MODELS

    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name].original
    if name in BUILTIN_MODELS or os.path.isabs(name) or os.path.exists(name) or name.startswith("."):
        return None
    return name


def base_model_text(name: str) -> str:
    hub_id = base_model_id(name)
    if hub_id is not None:
        return f"`{hub_id}`" + (f" (as `{name}`)" if hub_id != name else "")
    if name.startswith("builtin:"):
        return f"`{name}` (a randomly initialised demo model built by ivon-lora)"
    return "a local model (not on the Hub)"


def front_matter(name: str, library: str) -> list[str]:
    hub_id = base_model_id(name)
    return ["---", f"library_name: {library}", *([f"base_model: {hub_id}"] if hub_id else []),
            "pipeline_tag: text-generation", "tags: [ivon-lora, lora, ivon, variational, bayesian]", "---"]  # fmt: skip


def posterior_lines(config: dict | None) -> list[str]:
    if config is None:
        return ["", "## Posterior", "", "None: a point estimate (the optimizer was not IVON)."]
    lines = ["", "## Posterior", "", f"- optimizer steps: {config.get('step')}; ess: {config.get('ess')}; prior "
             f"precision (weight decay): {config.get('weight_decay')}; temperature: {config.get('temperature', 1.0)}"]  # fmt: skip
    for pruning in config.get("pruning", []):
        lines.append(f"- pruned {pruning['num_pruned']} of {pruning['num_entries']} entries "
                     f"({pruning['scope']}, {pruning['mode']}, by {pruning['criterion']})")  # fmt: skip
    return lines


def usage_lines(directory: str, has_posterior: bool) -> list[str]:
    lines = ["", "## Load and sample", "", "```python", "import torch", "from ivon_lora import load_run", "",
             f'run = load_run("{directory}")  # base model + adapter (the posterior mean) + posterior']  # fmt: skip
    if has_posterior:
        lines += ["with run.posterior.sample(run.model, generator=torch.Generator().manual_seed(0)):",
                  "    ...  # run.model holds one posterior sample here", "```", "",
                  f"or `ivon-lora generate {directory} --prompt '...' --samples 10` and "
                  f"`ivon-lora eval {directory} --samples 10` from the command line."]  # fmt: skip
    else:
        lines += ["```", "", f"or `ivon-lora generate {directory} --prompt '...'` from the command line."]
    return lines


def metric_table(metrics: dict) -> list[str]:
    """The scalar metrics of each predictive ("mean", "sampled") as a table: at the mean and with S samples."""
    rows = [(name, values) for name, values in metrics.items() if isinstance(values, dict)]
    keys = [k for k, v in rows[0][1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if rows else []
    lines = [f"| predictive | {' | '.join(keys)} |", "|---" * (1 + len(keys)) + "|"]
    for name, values in rows:
        label = "posterior mean" if name == "mean" else f"{values.get('samples', '')} posterior samples"
        cells = [f"{values[k]:.4g}" if isinstance(values.get(k), float) else str(values.get(k, "")) for k in keys]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def run_card(directory: str, report: dict, posterior_config: dict | None) -> str:
    """The README.md of a run dir that `ivon-lora train` made, from its metrics.json `report`."""
    from .rundir import environment_text

    recipe = report["recipe"]
    name = recipe["model_name_or_path"]
    task = report.get("task") or report.get("dataset")
    objective = get_objective(report.get("objective", "choice")).help  # metrics.json names a non-default one
    lines = [*front_matter(name, "peft"), f"# {os.path.basename(os.path.abspath(directory))}", "",
             f"A LoRA adapter on {base_model_text(name)} trained with {report['optimizer']} by ivon-lora; with IVON the "
             "adapter is the posterior mean and `posterior.safetensors` holds each weight's variance.", "",
             f"- task: `{task}` ({objective}), trained on split `{recipe.get('train_split')}`",
             f"- reported on split `{report['split']}`", "", f"## Metrics ({task}, split {report['split']})", "",
             *metric_table(report["metrics"]), "",
             "Protocol: " + "; ".join(f"{k}: {v}" for k, v in report["protocol"].items()) + ".",
             *posterior_lines(posterior_config), *usage_lines(os.path.basename(os.path.abspath(directory)),
                                                              posterior_config is not None),
             "", "## Made with", "", "```bash", command_line(), "```", "",
             "Versions: " + environment_text(report["environment"]) + ". The resolved recipe "
             "is `recipe.yaml`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_run_card(final_dir: str, output_dir: str, report: dict) -> None:
    """Write `run_card` into `final_dir` (train's staged final files), replacing the blank card PEFT saved."""
    from .fileio import atomic_write, read_json
    from .filenames import MODEL_CARD_NAME, POSTERIOR_CONFIG_NAME

    config_path = os.path.join(final_dir, POSTERIOR_CONFIG_NAME)
    posterior_config = read_json(config_path) if os.path.isfile(config_path) else None
    card = run_card(output_dir, report, posterior_config)

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(card)

    atomic_write(os.path.join(final_dir, MODEL_CARD_NAME), write)
