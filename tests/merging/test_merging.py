"""Merging adapters (ivon_lora.merging): the formulas against their special cases and closed forms, the ΔW path
against a plain loop re-implementation, PEFT's types against add_weighted_adapter itself, merged dirs round-tripping
through PeftModel.from_pretrained, and the input checks' messages."""

import json
import os
import shutil

import pytest
import torch

from ivon_lora.lora_update import delta_moments
from ivon_lora.merging.gaussian import gradient_matching, low_rank_factors, product_of_gaussians
from ivon_lora.merging.peft_types import peft_merge
from ivon_lora.merging.runs import MergeInput, check_inputs, merge_adapters, merge_runs, read_input


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ formulas


def test_uncertainty_with_equal_scalar_precisions_is_averaging_and_task_arithmetic():
    thetas = [_random(5, 3, seed=s) for s in range(3)]
    alphas = [0.7, 0.2, 0.5]
    # H₀ = 0 and H_t = h for all t: the α-weighted average.
    equal = [torch.full((5, 3), 4.0, dtype=torch.float64)] * 3
    average = sum(a * t for a, t in zip(alphas, thetas)) / sum(alphas)
    torch.testing.assert_close(gradient_matching(thetas, equal, alphas, 0.0), average)
    # H_t = 0 and any H₀ > 0: task arithmetic θ₀ + Σ α_t (θ_t − θ₀), θ₀ = 0.
    zero = [torch.zeros(5, 3, dtype=torch.float64)] * 3
    torch.testing.assert_close(gradient_matching(thetas, zero, alphas, 3.0), sum(a * t for a, t in zip(alphas, thetas)))
    # Weights summing to 1 with equal precisions: averaging whatever H₀ is.
    alphas = [0.5, 0.3, 0.2]
    torch.testing.assert_close(
        gradient_matching(thetas, equal, alphas, 11.0), sum(a * t for a, t in zip(alphas, thetas))
    )


def test_product_of_posteriors_is_the_union_posterior_of_a_linear_gaussian_problem():
    """y_t = X_t θ + ε, ε ~ N(0, σ²), prior N(0, δ⁻¹ I); designs with orthogonal columns keep every posterior diagonal,
    so the diagonal product must equal the full closed-form posterior of the union."""
    d, n, sigma2, delta = 6, 40, 0.5, 2.0
    q, _ = torch.linalg.qr(_random(n, d, seed=0))
    truth = _random(d, seed=1)
    designs = [q * _random(d, seed=2 + t).abs()[None, :] for t in range(2)]
    targets = [x @ truth + 0.3 * _random(n, seed=5 + t) for t, x in enumerate(designs)]

    def posterior(xs, ys):
        precision = delta * torch.eye(d, dtype=torch.float64) + sum(x.T @ x for x in xs) / sigma2
        mean = torch.linalg.solve(precision, sum(x.T @ y for x, y in zip(xs, ys)) / sigma2)
        return mean, precision

    tasks = [posterior([x], [y]) for x, y in zip(designs, targets)]
    means, precisions = [m for m, _ in tasks], [torch.diagonal(p) for _, p in tasks]
    assert all(torch.allclose(p, torch.diag(torch.diagonal(p))) for _, p in tasks)
    mean, precision = product_of_gaussians(means, precisions, [1.0, 1.0], delta)
    union_mean, union_precision = posterior(designs, targets)
    torch.testing.assert_close(mean, union_mean)
    torch.testing.assert_close(precision, torch.diagonal(union_precision))
    # α weighs each task's likelihood: the posterior of the α-weighted loss.
    mean, _ = product_of_gaussians(means, precisions, [0.3, 1.7], delta)
    weighted = posterior([designs[0] * 0.3**0.5, designs[1] * 1.7**0.5], [targets[0] * 0.3**0.5, targets[1] * 1.7**0.5])
    torch.testing.assert_close(mean, weighted[0])


def test_delta_moments_equal_a_loop_and_monte_carlo():
    a, b = _random(3, 5, seed=0), _random(4, 3, seed=1)
    va, vb = _random(3, 5, seed=2).abs() * 0.1, _random(4, 3, seed=3).abs() * 0.1
    mean, variance = delta_moments(a, va, b, vb, 2.0)
    for i in range(4):
        for j in range(5):
            assert mean[i, j].item() == pytest.approx(2.0 * sum(b[i, k] * a[k, j] for k in range(3)).item())
            expected = 4.0 * sum(
                b[i, k] ** 2 * va[k, j] + vb[i, k] * a[k, j] ** 2 + vb[i, k] * va[k, j] for k in range(3)
            )
            assert variance[i, j].item() == pytest.approx(expected.item())
    draws = 200_000
    generator = torch.Generator().manual_seed(9)
    sa = a + va.sqrt() * torch.randn(draws, 3, 5, generator=generator, dtype=torch.float64)
    sb = b + vb.sqrt() * torch.randn(draws, 4, 3, generator=generator, dtype=torch.float64)
    product = 2.0 * sb @ sa
    torch.testing.assert_close(product.var(0), variance, rtol=0.03, atol=1e-3)


# ------------------------------------------------------------------ the ΔW path against a dense re-implementation


def _inputs(ranks=(2, 3), seed=0, variance=True, **config_changes):
    inputs = []
    for t, r in enumerate(ranks):
        key = "base_model.model.layer.proj"
        tensors = {f"{key}.lora_A.weight": _random(r, 5, seed=seed + 10 * t).float(),
                   f"{key}.lora_B.weight": _random(4, r, seed=seed + 10 * t + 1).float()}  # fmt: skip
        variances = {k: (_random(*v.shape, seed=seed + 10 * t + 2 + i).abs() * 0.05 + 0.01).float()
                     for i, (k, v) in enumerate(tensors.items())} if variance else None  # fmt: skip
        config = {"r": r, "lora_alpha": 2 * r, "target_modules": ["proj"], "base_model_name_or_path": "tiny",
                  **config_changes}  # fmt: skip
        inputs.append(MergeInput(f"/runs/{t}", config, tensors, variances, {"ess": 10.0, "weight_decay": 0.0}, None))
    return inputs


def _dense_delta_merge(inputs, weights, base_precision):
    """The ΔW path written out entry by entry."""
    deltas, precisions = [], []
    for run in inputs:
        a, b = (run.tensors[f"base_model.model.layer.proj.lora_{f}.weight"].double() for f in "AB")
        va, vb = (run.variance[f"base_model.model.layer.proj.lora_{f}.weight"].double() for f in "AB")
        s = run.config["lora_alpha"] / run.config["r"]
        delta, precision = torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64)
        for i in range(4):
            for j in range(5):
                delta[i, j] = s * sum(b[i, k] * a[k, j] for k in range(a.shape[0]))
                var = s * s * sum(b[i, k] ** 2 * va[k, j] + vb[i, k] * a[k, j] ** 2 + vb[i, k] * va[k, j]
                                  for k in range(a.shape[0]))  # fmt: skip
                precision[i, j] = 1.0 / var
        deltas.append(delta)
        precisions.append(precision)
    h0 = base_precision * sum(p.mean() for p in precisions) / len(precisions)
    merged = torch.zeros(4, 5, dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            total = h0 + sum(w * p[i, j] for w, p in zip(weights, precisions))
            merged[i, j] = sum(w * (h0 + p[i, j]) * d[i, j] for w, p, d in zip(weights, precisions, deltas)) / total
    return merged


@pytest.mark.parametrize("base_precision", [0.0, 0.5])
def test_delta_space_merge_equals_a_dense_loop(base_precision):
    inputs = _inputs()
    weights = [0.6, 0.9]
    tensors, config, variance = merge_adapters(inputs, "uncertainty", weights, "delta", rank=4,
                                               base_precision=base_precision)  # fmt: skip
    assert variance is None and config["r"] == config["lora_alpha"] == 4  # scaling 1; full rank 4 = exact
    merged = tensors["base_model.model.layer.proj.lora_B.weight"] @ tensors["base_model.model.layer.proj.lora_A.weight"]
    torch.testing.assert_close(
        merged.double(), _dense_delta_merge(inputs, weights, base_precision), rtol=1e-5, atol=1e-6
    )
    # The product of posteriors in ΔW space (S₀ = 0) is the same mean as gradient matching with H₀ = 0.
    if base_precision == 0.0:
        other, _, _ = merge_adapters(inputs, "posterior", weights, "delta", rank=4)
        torch.testing.assert_close(other, tensors)


def test_low_rank_factors_are_the_truncated_svd():
    delta = _random(6, 4, seed=3)
    a, b = low_rank_factors(delta, 2)
    u, s, vh = torch.linalg.svd(delta)
    torch.testing.assert_close(b @ a, u[:, :2] @ torch.diag(s[:2]) @ vh[:2])
    torch.testing.assert_close(b.norm(), a.norm())  # split evenly


def test_low_rank_factors_randomized_above_the_exact_limit_match_the_truncated_svd():
    # 1100 rows: randomized (the exact limit is on the larger side); a rank-6 update plus small noise, cut at rank 6.
    signal = _random(1100, 6, seed=4) @ _random(6, 40, seed=5)
    delta = (signal + 1e-3 * _random(1100, 40, seed=6)).float()
    a, b = low_rank_factors(delta, 6)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    torch.testing.assert_close(b @ a, u[:, :6] @ torch.diag(s[:6]) @ vh[:6], rtol=1e-4, atol=1e-4)


def test_uncertainty_with_a_dominant_base_precision_is_task_arithmetic_in_delta_space():
    inputs = _inputs()
    tensors, _, _ = merge_adapters(inputs, "uncertainty", [1.0, 1.0], "delta", base_precision=1e9)
    merged = tensors["base_model.model.layer.proj.lora_B.weight"] @ tensors["base_model.model.layer.proj.lora_A.weight"]
    arithmetic = sum(run.scaling * run.tensors["base_model.model.layer.proj.lora_B.weight"]
                     @ run.tensors["base_model.model.layer.proj.lora_A.weight"] for run in inputs)  # fmt: skip
    torch.testing.assert_close(merged, arithmetic, rtol=1e-4, atol=1e-5)


def test_delta_space_posterior_merge_uses_the_prior_the_factor_prior_implies_for_delta_w():
    """With weight decay the runs share a prior N(0, 1/S₀) per factor entry; in ΔW its precision is S₀² / (s²·r)."""
    inputs = _inputs(ranks=(3, 3))
    for run in inputs:
        run.posterior_config = {"ess": 10.0, "weight_decay": 0.02}
    s0 = (10.0 * 0.02) ** 2 / (inputs[0].scaling ** 2 * 3)
    assert inputs[0].delta_prior_precision == pytest.approx(s0)
    weights = [0.7, 0.4]
    tensors, _, _ = merge_adapters(inputs, "posterior", weights, "delta", rank=4)
    key = "base_model.model.layer.proj"
    moments = [delta_moments(run.tensors[f"{key}.lora_A.weight"].double(), run.variance[f"{key}.lora_A.weight"].double(),
                             run.tensors[f"{key}.lora_B.weight"].double(), run.variance[f"{key}.lora_B.weight"].double(),
                             run.scaling) for run in inputs]  # fmt: skip
    expected, _ = product_of_gaussians([m for m, _ in moments], [1 / v for _, v in moments], weights, s0)
    merged = tensors[f"{key}.lora_B.weight"].double() @ tensors[f"{key}.lora_A.weight"].double()
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    without_prior, _ = product_of_gaussians([m for m, _ in moments], [1 / v for _, v in moments], weights, 0.0)
    assert not torch.allclose(merged, without_prior, rtol=1e-4, atol=1e-6)  # the prior is not dropped


def test_factor_space_posterior_merge_is_entrywise_and_returns_its_variance():
    inputs = _inputs(ranks=(3, 3))
    tensors, config, variance = merge_adapters(inputs, "posterior", [1.0, 0.5], "factor")
    assert config["r"] == 3
    for key in tensors:
        s = [1 / run.variance[key].double() for run in inputs]
        expected = (s[0] * inputs[0].tensors[key] + 0.5 * s[1] * inputs[1].tensors[key]) / (s[0] + 0.5 * s[1])
        torch.testing.assert_close(tensors[key].double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(variance[key].double(), 1 / (s[0] + 0.5 * s[1]), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ run dirs


@pytest.fixture(scope="module")
def two_runs(run_dir, tmp_path_factory):
    """The shared IVON run and a second one: the same dir with another adapter and posterior (a stand-in task)."""
    from ivon_lora.posterior import Posterior

    second = tmp_path_factory.mktemp("merge") / "second"
    shutil.copytree(run_dir, second, ignore=shutil.ignore_patterns("checkpoint-*", "eval-*"))
    posterior = Posterior.load(run_dir)
    mean = {k: v + 0.05 * _random(*v.shape, seed=i).float() for i, (k, v) in enumerate(sorted(posterior.mean.items()))}
    variance = {
        k: v * (1.5 + _random(*v.shape, seed=100 + i).float().abs())
        for i, (k, v) in enumerate(sorted(posterior.variance.items()))
    }
    Posterior(mean, variance, posterior.config).save(str(second), include_mean=True)
    return [run_dir, str(second)]


PEFT_TYPES_CHECKED = ["linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "magnitude_prune"]


@pytest.mark.parametrize("combination_type", PEFT_TYPES_CHECKED)
def test_peft_types_equal_add_weighted_adapter_on_the_real_model(two_runs, combination_type):
    from peft import PeftModel

    from ivon_lora.rundir import load_run

    run = load_run(two_runs[0])
    model = run.model
    model.load_adapter(two_runs[1], adapter_name="second")
    torch.manual_seed(0)
    model.add_weighted_adapter(["default", "second"], [0.7, 0.4], "direct", combination_type=combination_type,
                               density=0.5)  # fmt: skip
    inputs = [read_input(d) for d in two_runs]
    tensors, config = peft_merge([r.config for r in inputs], [r.tensors for r in inputs], [0.7, 0.4], combination_type,
                                 density=0.5, seed=0)  # fmt: skip
    assert isinstance(model, PeftModel) and config["r"] == model.peft_config["direct"].r
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "direct" in module.lora_A:
            path = name[len("base_model.model.") :]
            torch.testing.assert_close(
                tensors[f"base_model.model.{path}.lora_A.weight"], module.lora_A["direct"].weight.float()
            )
            torch.testing.assert_close(
                tensors[f"base_model.model.{path}.lora_B.weight"], module.lora_B["direct"].weight.float()
            )


@pytest.mark.parametrize("method,space", [("uncertainty", "delta"), ("posterior", "factor"), ("ties", "delta")])
def test_merged_dir_round_trips_through_peft_and_load_run(two_runs, tmp_path, method, space):
    from peft import PeftModel

    from ivon_lora.fileio import read_tensors
    from ivon_lora.builtin import BUILTIN_MODELS  # noqa: F401  (the tiny base the recipe names)
    from ivon_lora.posterior import Posterior
    from ivon_lora.rundir import load_run

    out = tmp_path / "merged"
    provenance = merge_runs(two_runs, method, [0.6, 0.6], str(out), space=space, density=0.5)
    saved = read_tensors(str(out / "adapter_model.safetensors"))
    run = load_run(str(out))  # the recipe rebuilds the base; PeftModel.from_pretrained loads the adapter
    assert isinstance(run.model, PeftModel)
    loaded = {k.replace(".default", ""): v for k, v in run.model.state_dict().items() if "lora_" in k}
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key], tensor)
    merge = json.loads((out / "merge.json").read_text())
    assert merge["method"] == method and merge["weights"] == [0.6, 0.6]
    assert [i["adapter_sha256"] for i in merge["inputs"]] == [i["adapter_sha256"] for i in provenance["inputs"]]
    assert merge["environment"]["peft"] and os.path.isfile(out / "README.md")
    if method == "posterior":  # the product of the factor posteriors, loadable as any posterior
        assert run.posterior is not None and merge["posterior"].startswith("the weighted product")
        assert set(Posterior.load(str(out)).variance) == set(saved)
        from ivon_lora.commands.inspect import inspect_run

        assert inspect_run(str(out))["posterior"]["step"] > 0  # `ivon-lora inspect` reads it
    else:
        assert run.posterior is None and merge["posterior"] is None


def test_merge_command_writes_a_dir_and_refuses_bad_inputs_before_loading(two_runs, adamw_run_dir, tmp_path, capsys):
    from ivon_lora import cli

    out = tmp_path / "cli"
    assert cli.main(["merge", *two_runs, "--method", "linear", "--weights", "0.5", "0.5", "--out", str(out)]) == 0
    assert json.loads((out / "merge.json").read_text())["method"] == "linear"

    def refused(*args):
        assert cli.main(["merge", *args, "--out", str(tmp_path / "refused")]) == 2
        assert not (tmp_path / "refused").exists()
        return capsys.readouterr().err.strip()

    message = refused(two_runs[0], adamw_run_dir, "--method", "uncertainty")
    assert message.count("\n") == 0 and adamw_run_dir in message and "no posterior" in message
    # The methods that need no posterior take the AdamW run.
    assert cli.main(["merge", two_runs[0], adamw_run_dir, "--method", "ties", "--density", "0.5",
                     "--out", str(tmp_path / "adamw")]) == 0  # fmt: skip
    assert "--density" in refused(*two_runs, "--method", "dare_ties")
    assert "2 values for 3 runs" in refused(*two_runs, two_runs[0], "--method", "linear", "--weights", "1", "1")


def test_input_mismatches_name_both_runs():
    def message(inputs, method="linear", space="delta"):
        with pytest.raises(Exception) as error:
            check_inputs(inputs, method, space, [1.0] * len(inputs), None)
        return str(error.value)

    assert "/runs/0 and /runs/1" in message(
        _inputs(ranks=(3, 3))[:1] + _inputs(ranks=(3, 3), base_model_name_or_path="other")[1:]
    )
    different_targets = _inputs(ranks=(3, 3))
    different_targets[1].config["target_modules"] = ["other"]
    assert "adapt different modules" in message(different_targets)
    assert "ranks 2 and 3" in message(_inputs(ranks=(2, 3)), "linear")
    assert "ranks 2 and 3" in message(_inputs(ranks=(2, 3)), "posterior", "factor")
    check_inputs(_inputs(ranks=(2, 3)), "uncertainty", "delta", [1.0, 1.0], None)  # ΔW space takes any ranks
    check_inputs(_inputs(ranks=(2, 3)), "cat", "delta", [1.0, 1.0], None)
    assert "no posterior" in message(_inputs(variance=False), "posterior")


def test_sweep_scores_every_point_on_every_task_and_writes_table_and_plot(two_runs, tmp_path):
    from ivon_lora import cli
    from ivon_lora.merging.sweep import plot_sweep, weight_points

    assert weight_points(2, (0.5, 1.0)) == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    simplex = weight_points(3, steps=2)
    assert len(simplex) == 3 and all(sum(p) == pytest.approx(1.0) for p in simplex)
    out = tmp_path / "sweep"
    assert cli.main(["merge", *two_runs, "--sweep", "--method", "linear", "uncertainty", "--sweep-values", "0.5", "1",
                     "--limit", "8", "--references", two_runs[1], "--out", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "sweep.json").read_text())
    labels = [row["label"] for row in result["rows"]]
    assert labels.count("input") == 2 and labels.count("reference") == 1
    assert labels.count("linear") == 4 and labels.count("uncertainty (space=delta, base_precision=0.0)") == 4
    assert all(set(row["scores"]) == {"synthetic"} and row["eval_seconds"] > 0 for row in result["rows"])
    # Scoring the merged adapter at (1, 0)-like weights of the same run reproduces that input's score.
    assert "| linear |" in (out / "sweep.md").read_text()
    rows = [
        {**row, "scores": {"a": row["scores"]["synthetic"], "b": row["scores"]["synthetic"]}} for row in result["rows"]
    ]
    plot_sweep(rows, "a", "b", str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_the_scorers_per_example_hits_give_its_accuracy_and_the_merge_study_pairs_them(two_runs):
    """AdapterScorer's per-example hits (for paired comparisons) average to its accuracy, in the split's order; the
    merge study's paired table is the paired bootstrap of those hits against task arithmetic's."""
    import importlib.util

    from ivon_lora.comparison.stats import interval_text, paired_bootstrap
    from ivon_lora.merging.runs import read_input
    from ivon_lora.merging.sweep import AdapterScorer
    from ivon_lora.tasks import get_task, load_split

    split = load_split(get_task("synthetic"), "validation", None, 24)
    scorer = AdapterScorer(two_runs[0], {"synthetic/test": split})
    scores = {}
    for i, directory in enumerate(two_runs):
        run = read_input(directory)
        scores[i] = scorer.score(run.tensors, run.config, per_example=True)["synthetic/test"]
        assert len(scores[i]["correct"]) == 24 and sum(scores[i]["correct"]) / 24 == pytest.approx(
            scores[i]["accuracy"]
        )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("study_merge", os.path.join(root, "scripts", "study_merge.py"))
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    baseline = {task: {"accuracy": 0.0, "correct": scores[0]["correct"]} for task in ("wordfacts", "antonyms")}
    other = {task: {"accuracy": 0.0, "correct": scores[1]["correct"]} for task in ("wordfacts", "antonyms")}
    state = {"test": {f"ivon-seed{s}": {"task arithmetic": {"scores": {f"{t}/test": v for t, v in baseline.items()}},
                                        "uncertainty": {"scores": {f"{t}/test": v for t, v in other.items()}}}
                      for s in (0, 1)}}  # fmt: skip
    (row,) = [line for line in merge.paired_lines(state) if line.startswith("| uncertainty |")]
    found = paired_bootstrap([scores[1]["correct"]] * 2, [scores[0]["correct"]] * 2)
    assert row == f"| uncertainty | 2 | {interval_text(found['difference'], found['interval'], 100.0, 1, signed=True)}" \
                  f" | {interval_text(found['difference'], found['interval'], 100.0, 1, signed=True)} |"  # fmt: skip
