"""Per-example sensitivity (the Memory-Perturbation Equation): covariances against oracles, LOO against retraining."""

import torch

from ivon_lora.posterior import Posterior
from ivon_lora.choice.sensitivity import choice_sensitivity
from ivon_lora.sensitivity import exact_variances, mpe_loo_outputs, sampled_variances
from ivon_lora.sensitivity import variance as variance_module


def _formatted(run, examples):
    from ivon_lora.choice import format_examples

    return format_examples(examples, tokenizer=run.tokenizer, model_args=run.model_args)


def _jacobian_covariances(run, examples):
    """The oracle: J Σ Jᵀ (K x K) from per-example Jacobians of the K logits over the adapter by torch.func, one example
    at a time."""
    from torch.func import functional_call, jacrev

    from ivon_lora.choice.collator import ChoiceCollator
    from ivon_lora.choice.logits import choice_logits
    from ivon_lora.posterior import adapter_parameters

    model, posterior = run.model, run.posterior
    posterior.apply_mean(model)
    names = {id(p): name for name, p in model.named_parameters()}
    adapter = {key: p for key, p in adapter_parameters(model).items()}
    collator = ChoiceCollator(run.tokenizer)
    rows = []
    for e in examples:
        batch = collator([{"prompt": e.prompt, "answers": e.answers, "gold": e.gold}])

        def logits(params, batch=batch):
            return choice_logits(
                lambda **kw: functional_call(model, {names[id(adapter[k])]: v for k, v in params.items()}, (), kw),
                batch,
            )[0]  # noqa: E731,E501

        jac = jacrev(logits)({k: p.detach() for k, p in adapter.items()})
        rows.append(sum(torch.einsum("kx,lx->kl", (jac[k].double() * posterior.variance[k].double()).flatten(1),
                                     jac[k].double().flatten(1)) for k in adapter))  # fmt: skip
    return torch.stack(rows)


def test_exact_covariance_equals_per_example_jacobians_by_torch_func(run, synthetic_examples, monkeypatch):
    examples = _formatted(run, synthetic_examples["validation"][:6])
    run.model.eval()
    oracle = _jacobian_covariances(run, examples)
    hooked = choice_sensitivity(run.model, run.tokenizer, examples, run.posterior, batch_size=4)
    assert hooked.full and oracle.abs().min() > 0  # the answers share the adapter: V is not diagonal
    torch.testing.assert_close(hooked.variance, oracle, rtol=1e-4, atol=1e-12)
    diagonal = choice_sensitivity(
        run.model, run.tokenizer, examples, run.posterior, batch_size=4, covariance="diagonal"
    )
    torch.testing.assert_close(diagonal.variance, torch.diagonal(oracle, dim1=1, dim2=2), rtol=1e-4, atol=1e-12)
    # The fallback for adapter tensors outside an nn.Linear (one example, one backward at a time) agrees too.
    monkeypatch.setattr(variance_module, "linear_owners", lambda model, bound: {})
    looped = choice_sensitivity(run.model, run.tokenizer, examples, run.posterior, batch_size=4)
    torch.testing.assert_close(looped.variance, oracle, rtol=1e-4, atol=1e-12)
    # MPE quantities from the definitions: the shift V e, its change of p through the softmax's Jacobian.
    p = torch.softmax(hooked.logits, -1)
    e = p - torch.nn.functional.one_hot(hooked.gold, p.shape[1])
    shift = torch.stack([oracle[i] @ e[i] for i in range(len(e))])
    softmax_jacobian = torch.stack([torch.diag(p[i]) - torch.outer(p[i], p[i]) for i in range(len(p))])
    expected = torch.stack([(softmax_jacobian[i] @ shift[i]).abs().sum() for i in range(len(p))])
    torch.testing.assert_close(hooked.sensitivity, expected, rtol=1e-4, atol=1e-15)
    loo = torch.log_softmax(hooked.logits + shift, -1).gather(1, hooked.gold[:, None])[:, 0]
    assert abs(hooked.loo_nll() - float(-loo.mean())) < 1e-6
    # The diagonal form: e ⊙ v and p (1 - p) ⊙ e ⊙ v.
    v = torch.diagonal(oracle, dim1=1, dim2=2)
    torch.testing.assert_close(diagonal.sensitivity, (e * p * (1 - p) * v).abs().sum(1), rtol=1e-4, atol=1e-15)
    loo = torch.log_softmax(diagonal.logits + e * diagonal.variance, -1).gather(1, diagonal.gold[:, None])[:, 0]
    assert abs(diagonal.loo_nll() - float(-loo.mean())) < 1e-12
    row = next(hooked.rows())
    assert row["variance"] == hooked.diagonal[0].tolist() and row["covariance"] == hooked.variance[0].tolist()


def _linear_model(num_features=5, num_outputs=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(num_features, num_outputs, bias=True)
    mean = {"weight": torch.randn(num_outputs, num_features, generator=generator),
            "bias": torch.randn(num_outputs, generator=generator)}  # fmt: skip
    variance = {"weight": torch.rand(num_outputs, num_features, generator=generator) * 0.1,
                "bias": torch.rand(num_outputs, generator=generator) * 0.1}  # fmt: skip
    posterior = Posterior(mean, variance, {"ess": 100.0})
    posterior.apply_mean(model)
    x = torch.randn(7, num_features, generator=generator)
    return model, posterior, x


def test_sampled_variance_converges_to_the_exact_one_on_a_linear_model():
    model, posterior, x = _linear_model()
    outputs = lambda model, batch: model(batch["x"])  # noqa: E731
    batches = [{"x": x[:4]}, {"x": x[4:]}]
    exact = exact_variances(model, posterior, batches, outputs)
    # f_k = w_k·x + b_k: Var f_k = Σ_j V_kj x_j² + V_b,k.
    by_hand = (x.double().square() @ posterior.variance["weight"].double().T) + posterior.variance["bias"].double()
    torch.testing.assert_close(exact, by_hand)
    sampled = sampled_variances(model, posterior, batches, outputs, num_samples=4000, seed=1)
    # The sample variance of S Gaussian draws has relative std sqrt(2 / (S - 1)) = 0.022: 5 of those.
    assert ((sampled - exact).abs() / exact).max() < 0.11
    few = sampled_variances(model, posterior, batches, outputs, num_samples=10, seed=1)
    assert ((few - exact).abs() / exact).max() > ((sampled - exact).abs() / exact).max()
    # Unbiased: the mean of many independent small-S estimates converges too.
    means = torch.stack([sampled_variances(model, posterior, batches, outputs, num_samples=3, seed=s)
                         for s in range(600)]).mean(0)  # fmt: skip
    assert ((means - exact).abs() / exact).max() < 0.12
    torch.testing.assert_close(model.weight.detach(), posterior.mean["weight"])  # the mean is back


def test_the_full_covariance_of_mixed_outputs_is_known_and_the_sample_covariance_converges_to_it():
    """Outputs g = M f of a linear layer f = W x + b mix its rows, so Cov g = M diag(Var f) Mᵀ, off-diagonal too."""
    model, posterior, x = _linear_model()
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, 0.2, 1.0]])
    outputs = lambda model, batch: model(batch["x"]) @ mix.T  # noqa: E731
    batches = [{"x": x[:4]}, {"x": x[4:]}]
    f_variance = (x.double().square() @ posterior.variance["weight"].double().T) + posterior.variance["bias"].double()
    by_hand = torch.einsum("kj,nj,lj->nkl", mix.double(), f_variance, mix.double())
    exact = exact_variances(model, posterior, batches, outputs, full=True)
    torch.testing.assert_close(exact, by_hand)
    torch.testing.assert_close(exact_variances(model, posterior, batches, outputs), torch.diagonal(by_hand, 0, 1, 2))
    sampled = sampled_variances(model, posterior, batches, outputs, num_samples=4000, seed=1, full=True)
    scale = torch.diagonal(by_hand, 0, 1, 2).sqrt()
    correlation_error = (sampled - by_hand).abs() / (scale[:, :, None] * scale[:, None, :])
    assert correlation_error.max() < 0.11  # each entry within 5 of its standard errors (about 0.022 of sqrt(V_kk V_ll))


def test_loo_equals_retraining_on_a_linear_gaussian_problem():
    """Bayesian linear regression, unit noise, prior precision δ: e = f - y, λ = 1, v = xᵀΣx. Removing i and
    refitting gives f + e v / (1 - v) exactly, which is the downdated MPE; the MPE's first-order f + e v is off by
    O(v²)."""
    generator = torch.Generator().manual_seed(0)
    n, d, delta = 40, 6, 2.0
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = X @ torch.randn(d, generator=generator, dtype=torch.float64) + torch.randn(
        n, generator=generator, dtype=torch.float64
    )
    precision = X.T @ X + delta * torch.eye(d, dtype=torch.float64)
    covariance = torch.linalg.inv(precision)
    mean = covariance @ X.T @ y
    f, v = X @ mean, torch.einsum("nd,de,ne->n", X, covariance, X)
    error, hessian = f - y, torch.ones(n, dtype=torch.float64)
    retrained = torch.stack([
        X[i] @ torch.linalg.solve(precision - torch.outer(X[i], X[i]), X.T @ y - X[i] * y[i]) for i in range(n)
    ])  # fmt: skip
    torch.testing.assert_close(mpe_loo_outputs(f, error, v, hessian, downdate=True), retrained, rtol=1e-10, atol=1e-10)
    first_order = mpe_loo_outputs(f, error, v)
    gap = (first_order - retrained).abs()
    assert bool((gap <= (error * v * v / (1 - v)).abs() + 1e-12).all())  # exactly the dropped term e v²/(1 - v)
    assert gap.max() > 1e-6  # and it is not zero: the first-order form is an approximation here


def test_command_writes_the_report_and_its_numbers_match_the_library(run_dir, run, tmp_path, capsys):
    import json

    from ivon_lora import cli
    from ivon_lora.choice import format_examples
    from ivon_lora.tasks import load_split

    out = tmp_path / "sens"
    assert (
        cli.main(["sensitivity", run_dir, "--split", "validation", "--limit", "12", "--top", "3", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "LOO-NLL estimate" in printed
        and len([l for l in printed.splitlines() if l.strip().startswith(("1 ", "2 ", "3 "))]) == 3
    )
    assert sorted(p.name for p in out.iterdir()) == [
        ".ivon-lora-output.json",  # the marker: `--overwrite` may replace this dir
        "ranked.txt",
        "sensitivity.jsonl",
        "sensitivity.png",
        "summary.json",
    ]
    rows = [json.loads(line) for line in (out / "sensitivity.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    examples = format_examples(load_split("synthetic", "validation", limit=12).examples, tokenizer=run.tokenizer,
                               model_args=run.model_args)  # fmt: skip
    expected = choice_sensitivity(
        run.model, run.tokenizer, examples, run.posterior, max_length=run.recipe.data.max_length
    )
    assert [r["id"] for r in rows] == expected.ids
    torch.testing.assert_close(
        torch.tensor([r["sensitivity"] for r in rows], dtype=torch.float64), expected.sensitivity
    )
    assert abs(summary["loo_nll"] - expected.loo_nll()) < 1e-9 and summary["settings"]["variance"] == "exact"
    assert {"protocol", "environment", "data"} <= set(summary)
    ranked = (out / "ranked.txt").read_text().splitlines()
    assert ranked[1].split()[-1] == expected.ids[expected.ranking()[0]] and len(ranked) == 13
    # The sampled estimator through the command: same ranking file shape, its settings recorded.
    out2 = tmp_path / "sampled"
    assert cli.main(["sensitivity", run_dir, "--split", "validation", "--limit", "12", "--variance", "sampled",
                     "--samples", "3", "--out", str(out2)]) == 0  # fmt: skip
    assert json.loads((out2 / "summary.json").read_text())["settings"]["samples"] == 3


def test_bad_input_gets_one_line_before_any_model_loads(run_dir, adamw_run_dir, tmp_path, capsys, monkeypatch):
    import shutil

    from ivon_lora import cli, rundir

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(rundir, "load_run", no_model)

    def fails(args, *needles):
        assert cli.main(["sensitivity", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err

    fails([adamw_run_dir, "--out", str(tmp_path / "a")], "adamw", "no posterior", "ranking by loss")
    stripped = tmp_path / "no-posterior"
    shutil.copytree(run_dir, stripped)
    (stripped / "posterior.safetensors").unlink()
    fails([str(stripped), "--out", str(tmp_path / "b")], "posterior.safetensors is missing")
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(
        '{"id": "q0", "question": "a b c", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": ""}\n'
    )
    fails([run_dir, "--split", "test", "--file", str(unlabelled), "--out", str(tmp_path / "c")], "no label")
    fails([run_dir, "bogus_option=1", "--out", str(tmp_path / "d")], "bogus_option")
    fails([run_dir, "--variance", "sampled", "--samples", "1", "--out", str(tmp_path / "e")], "samples")


def test_trainer_logs_the_loo_nll_estimate_next_to_eval_loss(tmp_path):
    import json

    from ivon_lora import cli
    from ivon_lora.choice import format_examples
    from ivon_lora.rundir import load_run
    from ivon_lora.tasks import load_split

    demo = str(__import__("pathlib").Path(__file__).parents[2] / "recipes" / "demo.yaml")
    out = tmp_path / "run"
    args = ["train", demo, f"output_dir={out}", "max_steps=10", "max_train_samples=24", "max_eval_samples=8",
            "eval_strategy=steps", "eval_steps=5", "ivon_loo_eval=true", "save_strategy=steps", "save_steps=10",
            "disable_tqdm=true", "lora_target=[q_proj, v_proj]", "lora_rank=4", "final_eval_samples=0"]  # fmt: skip
    assert cli.main(args) == 0
    history = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    loo = {entry["step"]: entry["eval_loo_nll"] for entry in history if "eval_loo_nll" in entry}
    assert [entry["step"] for entry in evals] == [5, 10] and sorted(loo) == [5, 10]
    # At step 10 the logged estimate is the library's on the train set with the checkpoint's posterior.
    run = load_run(str(out / "checkpoint-10"))
    examples = format_examples(load_split("synthetic", "train", limit=24).examples, tokenizer=run.tokenizer,
                               model_args=run.model_args)  # fmt: skip
    expected = choice_sensitivity(
        run.model, run.tokenizer, examples, run.posterior, max_length=run.recipe.data.max_length
    )
    assert abs(loo[10] - expected.loo_nll()) < 1e-4


def test_loo_eval_needs_ivon():
    import pytest

    from ivon_lora.trainer import IVONTrainingArguments

    with pytest.raises(ValueError, match="ivon_loo_eval needs optim='ivon'"):
        IVONTrainingArguments(output_dir="x", optim="adamw_torch", ivon_loo_eval=True)


def test_sequence_level_variance_equals_torch_func_jacobians_of_the_document_log_likelihood(run):
    from torch.func import functional_call, jacrev

    from ivon_lora.posterior import adapter_parameters
    from ivon_lora.sft.sensitivity import _document_log_likelihoods, sft_sensitivity

    model, posterior, tokenizer = run.model, run.posterior, run.tokenizer
    texts = ["What is cat? animal", "What is a red apple, if anything? fruit"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    labels[:, : labels.shape[1] - 3] = -100  # the last 3 tokens are the targets
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    result = sft_sensitivity(model, posterior, [batch])
    names = {id(p): name for name, p in model.named_parameters()}
    adapter = adapter_parameters(model)
    oracle = []
    for i in range(2):
        row = {k: v[i : i + 1] for k, v in batch.items()}

        def log_likelihood(params, row=row):
            call = lambda **kw: functional_call(model, {names[id(adapter[k])]: v for k, v in params.items()}, (), kw)  # noqa: E731
            return _document_log_likelihoods(call, row)[0, 0]

        jac = jacrev(log_likelihood)({k: p.detach() for k, p in adapter.items()})
        oracle.append(sum(float((jac[k].double().square() * posterior.variance[k].double()).sum()) for k in adapter))
    torch.testing.assert_close(result.variance, torch.tensor(oracle, dtype=torch.float64), rtol=1e-4, atol=1e-15)
    assert result.token_count.tolist() == [3, 3]
    expected = float((result.variance - result.log_likelihood).sum() / 6)
    assert abs(result.loo_nll() - expected) < 1e-12 and torch.equal(result.sensitivity, result.variance)
