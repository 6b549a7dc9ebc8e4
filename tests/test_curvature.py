"""The curvature at the posterior mean (ivon_lora.curvature) against known answers and a plain torch.func
computation, and `ivon-lora refine` through the command line."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from ivon_lora import cli
from ivon_lora.curvature import (
    agreement,
    data_hessian,
    debiased_hessian,
    diagonal_fisher,
    price_hessian,
    refined,
    spearman,
)
from ivon_lora.posterior import Posterior


def _softmax_regression(num_examples=12, num_features=4, num_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(num_features, num_classes).double()
    mean = {"weight": torch.randn(num_classes, num_features, generator=generator, dtype=torch.float64),
            "bias": torch.randn(num_classes, generator=generator, dtype=torch.float64)}  # fmt: skip
    variance = {key: torch.full_like(value, 0.01) for key, value in mean.items()}
    posterior = Posterior(mean, variance, {"ess": 100.0, "weight_decay": 0.0})
    posterior.apply_mean(model)
    x = torch.randn(num_examples, num_features, generator=generator, dtype=torch.float64)
    labels = torch.randint(num_classes, (num_examples,), generator=generator)
    batches = [{"x": x[i : i + 5], "labels": labels[i : i + 5]} for i in range(0, num_examples, 5)]
    return model, posterior, batches, x


def _logits(model, batch):
    return model(batch["x"])


def test_the_ggn_of_softmax_regression_is_its_closed_form():
    """For logits W x + b: F_kj = mean_i p_ik (1 - p_ik) x_ij², F_k = mean_i p_ik (1 - p_ik)."""
    model, posterior, batches, x = _softmax_regression()
    fisher = diagonal_fisher(model, posterior, batches, _logits)
    p = torch.softmax(model(x).detach(), -1)
    weight = (p * (1 - p)).T @ x.square() / x.shape[0]
    torch.testing.assert_close(fisher["weight"], weight, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fisher["bias"], (p * (1 - p)).mean(0), rtol=1e-10, atol=1e-14)
    # Labels drawn from the model estimate the same expectation.
    sampled = diagonal_fisher(model, posterior, batches, _logits, samples=4000, seed=1)
    torch.testing.assert_close(sampled["weight"], weight, rtol=0.1, atol=0.0)


def test_the_price_estimator_recovers_the_hessian_of_a_linear_gaussian_problem():
    """Loss 0.5 (y - w·x)² averaged over examples: its Hessian is XᵀX / N, whatever the posterior's width."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0])
    y = torch.randn(40, generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    mean = {"weight": torch.randn(1, 3, generator=generator, dtype=torch.float64)}
    posterior = Posterior(mean, {"weight": torch.tensor([[0.3, 0.01, 0.05]], dtype=torch.float64)}, {"ess": 40.0})
    posterior.apply_mean(model)
    batches = [{"x": x[i : i + 10], "y": y[i : i + 10], "labels": y[i : i + 10]} for i in range(0, 40, 10)]

    def loss(model, batch):
        return 0.5 * (model(batch["x"])[:, 0] - batch["y"]).square().mean()

    hessian = price_hessian(model, posterior, batches, loss, samples=3000, seed=0)
    torch.testing.assert_close(hessian["weight"][0], (x.square()).mean(0), rtol=0.04, atol=0.0)
    assert model.weight.detach().equal(mean["weight"])  # the adapter is back at the mean
    # The refined posterior of that curvature: same mean, precision ess·(h + δ): the closed form with h = XᵀX / N.
    result = refined(posterior, {"weight": (x.square()).mean(0)[None]}, ess=40.0, prior_precision=0.1, record={})
    assert result.mean["weight"].equal(mean["weight"])
    torch.testing.assert_close(1.0 / result.variance["weight"].double(), 40.0 * (x.square().mean(0)[None] + 0.1))


def test_the_debiased_hessian_is_its_formula_and_spearman_handles_ties():
    variance = {"a": torch.tensor([1.0, 0.5, 0.25])}
    config = {"ess": 10.0, "weight_decay": 0.01, "step": 200, "hyperparameters": {"beta2": 0.999, "hess_init": 0.02}}
    posterior = Posterior({"a": torch.zeros(3)}, variance, config)
    h = 1.0 / (10.0 * variance["a"].double()) - 0.01
    torch.testing.assert_close(data_hessian(posterior)["a"], h)
    kept = 0.999**200
    torch.testing.assert_close(debiased_hessian(posterior)["a"], (h - kept * 0.02) / (1 - kept))
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(3), torch.arange(3.0)))
    result = agreement({"a": torch.tensor([1.0, 2.0, 4.0])}, {"a": torch.tensor([1.0, 3.0, 9.0])})
    assert result["spearman_median"] == pytest.approx(1.0) and result["matrices"]["a"]["dynamic_range"] == 2.0


def test_the_ggn_of_a_lora_model_equals_per_example_jacobians_by_torch_func(run, synthetic_examples):
    from torch.func import functional_call, jacrev

    from ivon_lora.choice import format_examples
    from ivon_lora.choice.collator import ChoiceCollator
    from ivon_lora.choice.curvature import choice_curvature
    from ivon_lora.choice.logits import choice_logits
    from ivon_lora.posterior import adapter_parameters

    examples = format_examples(synthetic_examples["validation"][:6], tokenizer=run.tokenizer, model_args=run.model_args)
    model, posterior = run.model, run.posterior
    model.eval()
    hooked = choice_curvature(model, run.tokenizer, examples, posterior, method="ggn", batch_size=4)
    posterior.apply_mean(model)
    names = {id(p): name for name, p in model.named_parameters()}
    adapter = adapter_parameters(model)
    collator = ChoiceCollator(run.tokenizer)
    oracle = {key: torch.zeros(p.shape, dtype=torch.float64) for key, p in adapter.items()}
    for e in examples:
        batch = collator([{"prompt": e.prompt, "answers": e.answers, "gold": e.gold}])

        def log_probs(params, batch=batch):
            call = lambda **kw: functional_call(model, {names[id(adapter[k])]: v for k, v in params.items()}, (), kw)  # noqa: E731
            return torch.log_softmax(choice_logits(call, batch)[0].double(), -1)

        jac = jacrev(log_probs)({k: p.detach() for k, p in adapter.items()})
        p = log_probs({k: p.detach() for k, p in adapter.items()}).exp().detach()
        for key in adapter:
            oracle[key] += (p.view(-1, *[1] * (jac[key].dim() - 1)) * jac[key].double().square()).sum(0) / len(examples)
    for key in adapter:
        torch.testing.assert_close(hooked[key], oracle[key], rtol=1e-4, atol=1e-12)
    assert sum(float(v.sum()) for v in oracle.values()) > 0

    # In ΔW: the layer computes W x + ΔW x, so ∂L/∂ΔW is the gradient of its base weight W, taken by torch.func.
    from ivon_lora.choice.curvature import choice_delta_fisher
    from ivon_lora.curvature import lora_layers

    delta = choice_delta_fisher(model, run.tokenizer, examples, posterior, batch_size=4)
    modules = dict(model.named_modules())
    bases = {path: modules[path].base_layer.weight for path in lora_layers(model, posterior)}
    base_of = {path: next(n for n, p in model.named_parameters() if p is weight) for path, weight in bases.items()}
    oracle = {path: torch.zeros(weight.shape, dtype=torch.float64) for path, weight in bases.items()}
    for e in examples:
        batch = collator([{"prompt": e.prompt, "answers": e.answers, "gold": e.gold}])

        def base_log_probs(weights, batch=batch):
            call = lambda **kw: functional_call(model, {base_of[k]: v for k, v in weights.items()}, (), kw)  # noqa: E731
            return torch.log_softmax(choice_logits(call, batch)[0].double(), -1)

        weights = {path: w.detach() for path, w in bases.items()}
        jac = jacrev(base_log_probs)(weights)
        p = base_log_probs(weights).exp().detach()
        for path in bases:
            oracle[path] += (p.view(-1, 1, 1) * jac[path].double().square()).sum(0) / len(examples)
    assert set(delta) == set(oracle)
    for path in oracle:
        torch.testing.assert_close(delta[path], oracle[path], rtol=1e-4, atol=1e-12)


def test_refine_keeps_the_mean_and_writes_the_curvature_precision_that_the_other_commands_use(run_dir, tmp_path):
    out = tmp_path / "refined"
    argv = ["refine", run_dir, "--limit", "24", "--out", str(out), "--prior-precision", "0.001"]
    assert cli.main(argv) == 0
    before, after = Posterior.load(run_dir), Posterior.load(str(out))
    for key in before.mean:
        assert before.mean[key].equal(after.mean[key])  # bitwise
    assert load_file(os.path.join(run_dir, "adapter_model.safetensors")).keys() == before.mean.keys()
    config = json.loads((out / "posterior_config.json").read_text())
    assert config["refine"]["method"] == "ggn" and config["refine"]["examples"] == 24
    assert config["weight_decay"] == 0.001 and config["ess"] == before.config["ess"]
    h = data_hessian(after)
    assert all(bool((value >= -1e-9).all()) for value in h.values())
    assert json.loads((out / ".ivon-lora-output.json").read_text())["command"] == "refine"
    # The refined dir is a run dir like the run's: sensitivity and inspect read its posterior.
    assert cli.main(["sensitivity", str(out), "--limit", "4", "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["settings"]["run_ess"] == before.config["ess"]
    assert cli.main(argv + ["--overwrite", "--method", "ivon", "--samples", "2"]) == 0
    assert json.loads((out / "posterior_config.json").read_text())["refine"]["method"] == "ivon"


def test_inspect_reports_the_agreement_with_the_curvature_and_names_refine(run_dir, tmp_path, capsys):
    out = tmp_path / "inspected"
    assert cli.main(["inspect", run_dir, "--curvature", "--curvature-limit", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    curvature = diagnostics["curvature"]
    assert curvature["reference"] == "exact GGN on 16 train examples"
    assert -1.0 <= curvature["h"]["spearman_median"] <= 1.0 and "debiased_h" in curvature
    assert "against the curvature (exact GGN on 16 train examples): median Spearman rho" in printed


def test_the_prior_dominated_and_not_learned_warnings_name_refine():
    from ivon_lora.diagnostics import warnings_for

    diagnostics = {"posterior": {"hess_at_init_share": 0.99, "beta2": 0.99999, "step": 200},
                   "curvature": {"reference": "exact GGN on 256 train examples", "h": {"spearman_median": 0.05}}}  # fmt: skip
    messages = warnings_for(diagnostics)
    assert [m.split(":")[0] for m in messages] == ["prior-dominated", "not learned"]
    assert all("`ivon-lora refine RUN --ess E1 E2 E3 --prior-precision D1 D2 D3 --out DIR`" in m for m in messages)
    diagnostics["curvature"]["h"]["spearman_median"] = 0.9
    diagnostics["posterior"]["hess_at_init_share"] = 0.1
    assert warnings_for(diagnostics) == []


def test_refine_chooses_the_scale_on_validation_as_eval_scores_each_candidate(run_dir, tmp_path):
    """A grid of (ess, δ): each candidate's recorded validation numbers are `ivon-lora eval`'s for that single
    candidate refined alone, the kept one has the lowest S-sample NLL, and its files are the single refine's."""
    grid = {"ess": ["1e4", "1e6"], "prior_precision": ["1e-4", "1e-2"]}
    out = tmp_path / "chosen"
    common = ["--limit", "24", "--batch-size", "8"]
    assert cli.main(["refine", run_dir, *common, "--ess", *grid["ess"], "--prior-precision", *grid["prior_precision"],
                     "--out", str(out)]) == 0  # fmt: skip
    selection = json.loads((out / "posterior_config.json").read_text())["refine"]["selection"]
    assert selection["split"] == "validation" and selection["samples"] == 2
    candidates = selection["candidates"]
    assert [(c["ess"], c["prior_precision"]) for c in candidates] == [
        (1e4, 1e-4),
        (1e4, 1e-2),
        (1e6, 1e-4),
        (1e6, 1e-2),
    ]
    for i, candidate in enumerate(candidates):
        alone = tmp_path / f"alone{i}"
        assert cli.main(["refine", run_dir, *common, "--ess", str(candidate["ess"]), "--prior-precision",
                         str(candidate["prior_precision"]), "--out", str(alone)]) == 0  # fmt: skip
        assert cli.main(["eval", str(alone), "--split", "validation", "--batch-size", "8", "--out",
                         str(tmp_path / f"eval{i}")]) == 0  # fmt: skip
        scored = json.loads((tmp_path / f"eval{i}" / "eval.json").read_text())
        (task,) = scored["tasks"].values()
        (numbers,) = task["runs"].values()
        assert candidate["sampled"]["nll"] == pytest.approx(numbers["sampled"]["nll"], abs=1e-9)
        assert candidate["mean"]["accuracy"] == pytest.approx(numbers["mean"]["accuracy"], abs=1e-9)
        if i == selection["chosen"]:
            chosen_alone = Posterior.load(str(alone))
    nlls = [c["sampled"]["nll"] for c in candidates]
    assert selection["chosen"] == nlls.index(min(nlls))
    assert len(set(nlls)) > 1  # the scale changes the predictive: the choice is not a tie
    kept = Posterior.load(str(out))
    for key in kept.variance:
        assert kept.variance[key].equal(chosen_alone.variance[key]) and kept.mean[key].equal(chosen_alone.mean[key])
