"""The posterior artifact: loading, sampling, temperature, pruning, the prune and export commands."""

import json
import os
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from ivon_lora import cli
from ivon_lora.choice import ChoiceCollator, choice_logits
from ivon_lora.posterior import Posterior
from ivon_lora.rundir import load_run


@pytest.fixture(scope="module")
def posterior(run_dir):
    return Posterior.load(run_dir)


def _logits(model, tokenizer, synthetic_examples):
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in synthetic_examples["validation"][:8]]
    with torch.no_grad():
        return choice_logits(model, ChoiceCollator(tokenizer)(rows))


def test_load_checks_that_adapter_and_posterior_belong_together(run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    variance = load_file(broken / "posterior.safetensors")
    key = min(variance)
    variance[key] = variance[key][:1]
    save_file(variance, broken / "posterior.safetensors")
    with pytest.raises(ValueError, match=f"{key}: adapter shape .* != posterior"):
        Posterior.load(str(broken))
    config = json.loads((broken / "adapter_config.json").read_text())
    config["r"] = 16
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="come from different LoRA settings"):
        Posterior.load(str(broken))
    os.remove(broken / "posterior.safetensors")
    with pytest.raises(FileNotFoundError, match="posterior.safetensors is missing"):
        Posterior.load(str(broken))


def test_samples_are_seeded_restore_the_weights_and_have_the_posterior_variance(run_dir, posterior):
    model = load_run(run_dir).model
    key, param = posterior.bind(model)[0]
    before = param.detach().clone()
    draws = []
    for seed in (0, 0, 1):
        with posterior.sample(model, generator=torch.Generator().manual_seed(seed)):
            draws.append(param.detach().clone())
        assert torch.equal(param, before)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # Over many draws the empirical variance approaches the posterior variance.
    generator = torch.Generator().manual_seed(3)
    samples = []
    for _ in range(200):
        with posterior.sample(model, generator=generator):
            samples.append(param.detach().clone())
    empirical = torch.stack(samples).var(dim=0)
    ratio = (empirical.mean() / posterior.variance[key].mean()).item()
    assert 0.85 < ratio < 1.15


def test_temperature_divides_the_variance(posterior):
    tempered = posterior.with_temperature(4.0).with_temperature(0.5)
    for key in posterior.variance:
        torch.testing.assert_close(tempered.variance[key], posterior.variance[key] / 2.0)
        assert torch.equal(tempered.mean[key], posterior.mean[key])
    assert tempered.config["temperature"] == 2.0
    with pytest.raises(ValueError, match="Invalid temperature value: 0"):
        posterior.with_temperature(0)


def test_fraction_zero_changes_nothing(posterior):
    pruned = posterior.prune(0.0)
    assert all(torch.equal(pruned.mean[k], posterior.mean[k]) for k in posterior.mean)
    assert all(torch.equal(pruned.variance[k], posterior.variance[k]) for k in posterior.variance)
    assert pruned.config["pruning"][-1]["num_pruned"] == 0


def test_global_pruning_removes_exactly_the_lowest_snr_entries(posterior):
    fraction = 0.3
    pruned = posterior.prune(fraction, scope="global", mode="zero")
    scores = posterior.prune_scores("snr")
    total = sum(s.numel() for s in scores.values())
    masks = {k: (pruned.variance[k] == 0) & (posterior.variance[k] != 0) for k in scores}
    assert sum(int(m.sum()) for m in masks.values()) == round(fraction * total)
    highest_pruned = max(float(scores[k][m].max()) for k, m in masks.items() if m.any())
    lowest_kept = min(float(scores[k][~m].min()) for k, m in masks.items() if (~m).any())
    assert highest_pruned <= lowest_kept
    assert all((pruned.mean[k][m] == 0).all() for k, m in masks.items())


def test_matrix_scope_prunes_the_same_fraction_of_every_matrix(posterior):
    pruned = posterior.prune(0.25, scope="matrix", mode="denoise", criterion="magnitude")
    for key, variance in pruned.variance.items():
        assert int((variance == 0).sum()) == round(0.25 * variance.numel()), key
        assert torch.equal(pruned.mean[key], posterior.mean[key]), "denoise keeps the mean"


@pytest.mark.parametrize("criterion", ["magnitude", "variance"])
def test_ablation_criteria_rank_by_their_quantity(posterior, criterion):
    pruned = posterior.prune(0.5, scope="global", mode="denoise", criterion=criterion)
    quantity = {
        k: (posterior.mean[k].abs() if criterion == "magnitude" else -posterior.variance[k]) for k in posterior.mean
    }
    masks = {k: pruned.variance[k] == 0 for k in quantity}
    assert max(float(quantity[k][m].max()) for k, m in masks.items() if m.any()) <= min(
        float(quantity[k][~m].min()) for k, m in masks.items() if (~m).any()
    )


def test_invalid_prune_options(posterior):
    with pytest.raises(ValueError, match="Invalid fraction value: 1.5"):
        posterior.prune(1.5)
    with pytest.raises(ValueError, match="Invalid scope value: 'layer'"):
        posterior.prune(0.1, scope="layer")
    with pytest.raises(ValueError, match="Invalid criterion value: 'random'"):
        posterior.prune(0.1, criterion="random")


def test_prune_command_output_loads_and_full_zero_pruning_gives_the_base_model(
    run_dir, tmp_path, llama_tokenizer, synthetic_examples
):
    out = tmp_path / "pruned"
    assert cli.main(["prune", run_dir, "--fraction", "1.0", "--mode", "zero", "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "recipe.yaml").is_file()
    assert not (out / "metrics.json").exists(), "the run's metrics do not describe the pruned adapter"
    pruned = load_run(str(out))
    assert pruned.posterior.config["pruning"][-1]["num_pruned"] == pruned.posterior.config["pruning"][-1]["num_entries"]
    assert isinstance(pruned.model, PeftModel)
    with pruned.model.disable_adapter():
        base = _logits(pruned.model, pruned.tokenizer, synthetic_examples)
    trained = _logits(load_run(run_dir).model, llama_tokenizer, synthetic_examples)
    assert torch.equal(_logits(pruned.model, pruned.tokenizer, synthetic_examples), base)
    assert not torch.allclose(trained, base), (
        "the trained adapter must change the outputs for this test to mean anything"
    )
    # An existing output dir is not overwritten unasked, and a failed prune leaves nothing behind.
    assert cli.main(["prune", run_dir, "--fraction", "0.1", "--out", str(out)]) == 2
    # Out of its bounds: one line naming the value, before anything loads (the bounds are the field's metadata).
    assert cli.main(["prune", run_dir, "--fraction", "2", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_failed_prune_leaves_no_output_dir(run_dir, tmp_path, monkeypatch):
    def fail(self, directory, include_mean=False):
        raise OSError("disk full")

    monkeypatch.setattr(Posterior, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["prune", run_dir, "--fraction", "0.1", "--out", str(tmp_path / "out")])
    assert os.listdir(tmp_path) == []


def test_export_merges_the_mean_and_keeps_the_posterior_and_a_model_card(run_dir, tmp_path, synthetic_examples):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    assert cli.main(["export", run_dir, "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    run = load_run(run_dir)
    torch.testing.assert_close(
        _logits(merged, tokenizer, synthetic_examples), _logits(run.model, run.tokenizer, synthetic_examples),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    Posterior.load(str(out / "posterior"))
    card = (out / "README.md").read_text()
    # A built-in random base has no Hub id: named in the text, not in the Hub metadata (base_model: takes Hub ids).
    assert "`builtin:tiny-llama` (a randomly initialised" in card and "base_model:" not in card
    assert (
        "| posterior mean |" in card
        and "## Recipe (keys that differ from the defaults)" in card
        and "ivon_ess: 1000000000.0" in card
    )


def _two_group_ivon_over_a_named_adapter(adapter_name):
    from peft import LoraConfig, get_peft_model

    from ivon_lora import IVON

    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["0", "1"]), adapter_name=adapter_name)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    first = [p for n, p in named.items() if ".0." in n]
    second = [p for n, p in named.items() if ".1." in n]
    optimizer = IVON([{"params": first, "ess": 100.0, "weight_decay": 1e-3}, {"params": second, "ess": 400.0}],
                     lr=0.1, ess=10.0, weight_decay=1e-4)  # fmt: skip
    return model, optimizer


def test_the_artifact_records_every_group_the_library_version_and_any_adapter_name(tmp_path):
    from ivon_lora import __version__

    model, optimizer = _two_group_ivon_over_a_named_adapter("mine")
    posterior = Posterior.from_optimizer(optimizer, model)
    config = posterior.config
    assert config["library"] == {"name": "ivon-lora", "version": __version__} and config["format_version"] == 2
    assert config["adapter_name"] == "mine" and config["adapter"]["r"] == 2
    groups = config["param_groups"]
    assert [(g["ess"], g["weight_decay"]) for g in groups] == [(100.0, 1e-3), (400.0, 1e-4)]
    assert config["ess"] is None and config["weight_decay"] is None  # not shared by the groups
    assert all(".0." in key for key in groups[0]["keys"]) and all(".1." in key for key in groups[1]["keys"])
    # Each group's variance is that of its own ess and prior precision (h = hess_init = 1 before any step).
    for group in groups:
        for key in group["keys"]:
            expected = 1 / (group["ess"] * (1.0 + group["weight_decay"]))
            torch.testing.assert_close(posterior.variance[key], torch.full_like(posterior.variance[key], expected))
    posterior.save(str(tmp_path), include_mean=True)
    assert Posterior.load(str(tmp_path)).config == config


def test_an_older_compatible_format_loads_with_a_warning_and_an_unknown_one_is_refused(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    config = json.loads((old / "posterior_config.json").read_text())
    config["format_version"] = 1
    (old / "posterior_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="older format_version 1"):
        loaded = Posterior.load(str(old))
    assert loaded.mean.keys() == Posterior.load(run_dir).mean.keys()
    config["format_version"] = 99
    (old / "posterior_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported format_version 99.*Upgrade ivon-lora"):
        Posterior.load(str(old))
