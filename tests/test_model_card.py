"""The model cards of `ivon-lora train` (a run dir's README.md, in place of PEFT's blank one) and `ivon-lora export`:
base model by Hub id (never a machine-local path), task, metrics at the mean and with S samples, the posterior's
settings, how to load and sample, the command that made it."""

import json
import os

from ivon_lora import cli
from ivon_lora.model_card import base_model_id, front_matter


def test_the_base_model_is_named_by_its_hub_id_never_by_a_local_path(tmp_path):
    assert base_model_id("builtin:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not its cache dir
    assert base_model_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert base_model_id(str(tmp_path)) is None and base_model_id("builtin:tiny-llama") is None
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in front_matter("builtin:smollm2-135m", "peft")
    assert not any(line.startswith("base_model") for line in front_matter(str(tmp_path), "peft"))


def test_a_trained_run_dir_carries_a_real_card(run_dir):
    card = open(os.path.join(run_dir, "README.md"), encoding="utf-8").read()
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    assert "More Information Needed" not in card and "/.cache/" not in card
    assert "task: `synthetic`" in card and "posterior mean" in card
    assert f"{metrics['metrics']['sampled']['samples']} posterior samples" in card
    assert f"{metrics['metrics']['mean']['accuracy']:.4g}" in card
    assert "ess:" in card and "run.posterior.sample(run.model" in card
    assert "ivon-lora train " in card and "output_dir=" in card  # the command that made it


def test_an_exported_dir_carries_the_card_with_usage_and_command(run_dir, tmp_path):
    out = tmp_path / "merged"
    assert cli.main(["export", run_dir, "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "More Information Needed" not in card and "Load and sample" in card
    assert f"ivon-lora export {run_dir} --out {out}" in card and "## Posterior" in card
