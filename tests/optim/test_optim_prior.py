"""IVON with a per-parameter prior N(m0, 1/(ess * p0)) (set_prior): the Bayesian identity, kernels, state, checks."""

import io

import pytest
import torch
from torch import nn

from ivon_lora.optim import IVON

from test_optim_ivon import _mixed_params, _mlp, _train

# ------------------------------------------------------------------------------------------ known answer

D = 40  # coordinates of the linear-Gaussian problem


def _linear_gaussian_data(n, shift, generator):
    """y_ij ~ N(theta_j, 1 / w_ij): per-example loss 0.5 * sum_j w_ij (theta_j - y_ij)^2, a diagonal quadratic."""
    weights = torch.rand(n, D, generator=generator, dtype=torch.float64) * 1.5 + 0.5
    targets = shift + torch.randn(n, D, generator=generator, dtype=torch.float64)
    return weights, targets


def _exact_moment_noise(optimizer):
    """Antithetic pairs of +-1 noise: the Monte Carlo averages of a pair are exact on a quadratic (mean of g = g at
    the mean, mean of eps * g = sigma^2 * H), so IVON's fixed point is reached without Monte Carlo error."""
    generator, pending = torch.Generator().manual_seed(0), []

    def sample_noise(params, noise, std):
        if pending:
            noise.copy_(pending.pop() * -std)
            return
        signs = torch.randint(0, 2, noise.shape, generator=generator).to(noise.dtype) * 2 - 1
        pending.append(signs)
        noise.copy_(signs * std)

    optimizer._sample_noise = sample_noise


def _fit(data, ess, weight_decay, start=None, prior=None, foreach=False, num_steps=200):
    weights, targets = data
    x = nn.Parameter(torch.zeros(D, dtype=torch.float64) if start is None else start.clone())
    optimizer = IVON([x], lr=0.5, ess=ess, hess_init=1.0, beta2=0.8, weight_decay=weight_decay, rescale_lr=False,
                     seed=0, foreach=foreach)  # fmt: skip
    _exact_moment_noise(optimizer)
    if prior is not None:
        optimizer.set_prior(x, *prior)
    for _ in range(num_steps):
        for _ in range(2):  # one antithetic pair per step
            with optimizer.sampled_params(train=True):
                (0.5 * weights * (x - targets) ** 2).sum(1).mean().backward()
        optimizer.step()
    return x.detach(), 1 / optimizer.posterior_variance()[0]


@pytest.mark.parametrize("foreach", [False, True])
def test_a_then_b_with_a_posterior_as_prior_equals_a_and_b_together(foreach):
    generator = torch.Generator().manual_seed(0)
    data_a, data_b = _linear_gaussian_data(300, 1.0, generator), _linear_gaussian_data(100, -0.5, generator)
    n_a, n_b, delta = 300, 100, 0.5
    # A alone, with the scalar prior N(0, 1/(n_a * delta)); its posterior N(m_a, 1/precision_a) is B's prior:
    # m0 = m_a, p0 = n_a * (h_a + delta) / n_b.
    mean_a, precision_a = _fit(data_a, n_a, delta, foreach=foreach)
    mean_b, precision_b = _fit(data_b, n_b, 0.0, start=mean_a, prior=(mean_a, precision_a / n_b), foreach=foreach)
    # A and B together, with the same prior counted once: ess n_a + n_b, weight decay n_a * delta / (n_a + n_b).
    both = (torch.cat([data_a[0], data_b[0]]), torch.cat([data_a[1], data_b[1]]))
    mean_ab, precision_ab = _fit(both, n_a + n_b, n_a * delta / (n_a + n_b), foreach=foreach)

    # The exact posterior of both data sets: precision n_a (H_a + delta) + n_b H_b, mean from the normal equations.
    hess_a, hess_b = data_a[0].mean(0), data_b[0].mean(0)
    precision = n_a * (hess_a + delta) + n_b * hess_b
    mean = (n_a * (data_a[0] * data_a[1]).mean(0) + n_b * (data_b[0] * data_b[1]).mean(0)) / precision
    for got_mean, got_precision in ((mean_b, precision_b), (mean_ab, precision_ab)):
        torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-9)
        torch.testing.assert_close(got_precision, precision, rtol=1e-9, atol=0)
    # Without the prior, the run on B forgets A: it ends near B's own solution.
    forgetful, _ = _fit(data_b, n_b, 0.0, start=mean_a, foreach=foreach)
    assert (forgetful - mean).abs().max() > 0.5


# ------------------------------------------------------------------------------------- implementations


def _run_with_priors(foreach, priors_on=(0, 2, 4), num_steps=6, mean_shift=0.3):
    """The mixed shapes and dtypes of test_optim_ivon, a prior on some parameters (in both groups)."""
    float32, float64 = _mixed_params()
    params = float32 + float64
    optimizer = IVON([dict(params=float32[:2] + float64[:1]), dict(params=float32[2:] + float64[1:], lr=0.01)],
                     lr=0.1, ess=30.0, beta2=0.9, weight_decay=0.01, clip_radius=0.02, seed=3, foreach=foreach)  # fmt: skip
    generator = torch.Generator().manual_seed(5)
    for index in priors_on:
        p = params[index]
        precision = torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2
        precision.view(-1)[0] = 0.0  # a zero precision (no prior on that entry) is allowed
        optimizer.set_prior(p, p.detach() + mean_shift, precision)
    for step in range(num_steps):
        for _ in range(2):
            with optimizer.sampled_params(train=True):
                loss = sum((p.sin() * (i + 1)).sum() for i, p in enumerate(params) if i != step % len(params))
                loss.backward()  # one parameter gets no gradient each step
        optimizer.step()
    return params, optimizer


def test_foreach_matches_for_loop_with_priors():
    params_foreach, optimizer_foreach = _run_with_priors(foreach=True)
    params_loop, optimizer_loop = _run_with_priors(foreach=False)
    for p_foreach, p_loop in zip(params_foreach, params_loop):
        assert torch.equal(p_foreach, p_loop)
        for key in optimizer_loop.state[p_loop]:
            assert torch.equal(optimizer_foreach.state[p_foreach][key], optimizer_loop.state[p_loop][key])
    assert all(torch.equal(a, b) for a, b in zip(optimizer_foreach.posterior_variance(),
                                                 optimizer_loop.posterior_variance()))  # fmt: skip


@pytest.mark.parametrize("foreach", [False, True])
def test_a_prior_leaves_the_other_parameters_bitwise_as_without(foreach):
    # The loss is a sum over parameters, so the others' gradients do not see the prior's parameters.
    with_priors, _ = _run_with_priors(foreach, priors_on=(0, 4))
    without, _ = _run_with_priors(foreach, priors_on=())
    for index, (a, b) in enumerate(zip(with_priors, without)):
        assert torch.equal(a, b) == (index not in (0, 4))


@pytest.mark.parametrize("foreach", [False, True])
def test_a_prior_around_zero_with_precision_weight_decay_is_the_scalar_weight_decay(foreach):
    def run(with_prior):
        model = _mlp(torch.float64)
        optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, beta2=0.99, weight_decay=0.3, seed=1, foreach=foreach)
        if with_prior:
            for p in model.parameters():
                optimizer.set_prior(p, torch.zeros_like(p), torch.full_like(p, 0.3))
        _train(optimizer, model, num_steps=10, mc_samples=2)
        return list(model.parameters()), optimizer

    (scalar, scalar_optimizer), (prior, prior_optimizer) = run(False), run(True)
    for a, b in zip(scalar, prior):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            scalar_optimizer.state[a]["hess"], prior_optimizer.state[b]["hess"], rtol=1e-12, atol=0
        )
    for a, b in zip(scalar_optimizer.posterior_variance(), prior_optimizer.posterior_variance()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_samples_have_the_prior_variance_before_any_step():
    x = nn.Parameter(torch.zeros(100_000))
    optimizer = IVON([x], lr=0.1, ess=50.0, hess_init=1e-6, weight_decay=1.0, seed=0)
    optimizer.set_prior(x, torch.full_like(x, 2.0), torch.full_like(x, 4.0))
    (variance,) = optimizer.posterior_variance()
    torch.testing.assert_close(variance, torch.full_like(x, 1 / (50.0 * (1e-6 + 4.0))))
    with optimizer.sampled_params():
        sample = x.detach().clone()
    assert abs(sample.var().item() / variance[0].item() - 1.0) < 0.02
    assert torch.equal(x, torch.zeros_like(x))  # the prior mean is where the decay pulls, not where samples start


def test_without_gradient_the_mean_moves_towards_the_prior_mean():
    x = nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    optimizer = IVON([x], lr=0.5, ess=1e6, hess_init=1e-3, weight_decay=0.0, seed=0)
    optimizer.set_prior(x, torch.tensor([3.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0]))
    for _ in range(50):
        with optimizer.sampled_params(train=True):
            pass
        optimizer.step()
    assert 1.0 < x[0].item() <= 3.0 and x[1].item() == -1.0 and x[2].item() == 0.5


# -------------------------------------------------------------------------------- state and checkpoints


def test_resumed_run_with_a_prior_continues_bitwise():
    def build():
        model = _mlp(torch.float32)
        optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, beta2=0.99, clip_radius=0.1, seed=11)
        generator = torch.Generator().manual_seed(2)
        for p in model.parameters():
            optimizer.set_prior(p, torch.randn(p.shape, generator=generator), torch.rand(p.shape, generator=generator))
        return model, optimizer

    model, optimizer = build()
    _train(optimizer, model, num_steps=5, mc_samples=2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert all(set(s) == {"step", "momentum", "hess", "prior_mean", "prior_precision"}
               for s in checkpoint["optimizer"]["state"].values())  # fmt: skip
    _train(optimizer, model, num_steps=3, mc_samples=2)

    resumed_model = _mlp(torch.float32, seed=1)
    resumed_optimizer = IVON(resumed_model.parameters(), lr=0.05, ess=100.0, beta2=0.99, clip_radius=0.1)  # no prior
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    _train(resumed_optimizer, resumed_model, num_steps=3, mc_samples=2)
    for p, resumed_p in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, resumed_p)
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, resumed_optimizer.state[resumed_p][key])


def test_loaded_prior_is_cast_to_the_parameter_dtype():
    x = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = IVON([x], lr=0.1, ess=10.0, seed=0)
    optimizer.set_prior(x, torch.ones(3, dtype=torch.float32), torch.ones(3, dtype=torch.float32))
    assert optimizer.state[x]["prior_mean"].dtype == torch.float64
    y = nn.Parameter(torch.zeros(3, dtype=torch.float32))
    other = IVON([y], lr=0.1, ess=10.0, seed=0)
    other.load_state_dict(optimizer.state_dict())
    assert other.state[y]["prior_precision"].dtype == torch.float32


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "mean, precision, message",
    [
        (
            torch.zeros(3),
            torch.ones(4),
            r"Invalid prior precision shape \(4,\) in set_prior\(\): the parameter.s is \(3,\)",
        ),
        (torch.zeros(3, 1), torch.ones(3), r"Invalid prior mean shape \(3, 1\)"),
        (torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3), "Invalid prior mean .* NaN or inf"),
        (torch.zeros(3), torch.tensor([1.0, float("inf"), 1.0]), "Invalid prior precision .* NaN or inf"),
        (torch.zeros(3), torch.tensor([1.0, -1e-3, 1.0]), "Invalid prior precision .* negative"),
        ([0.0, 0.0, 0.0], torch.ones(3), "Invalid prior mean .* expected a tensor, got list"),
    ],
)
def test_invalid_priors_are_rejected(mean, precision, message):
    x = nn.Parameter(torch.zeros(3))
    optimizer = IVON([x], lr=0.1, ess=10.0, seed=0)
    with pytest.raises(ValueError, match=message):
        optimizer.set_prior(x, mean, precision)
    assert "prior_mean" not in optimizer.state[x]


def test_prior_of_a_foreign_parameter_or_with_mean_weight_decay_is_rejected():
    x = nn.Parameter(torch.zeros(3))
    optimizer = IVON([x], lr=0.1, ess=10.0, seed=0)
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        optimizer.set_prior(nn.Parameter(torch.zeros(3)), torch.zeros(3), torch.ones(3))
    decoupled = IVON([x], lr=0.1, ess=10.0, mean_weight_decay=0.0, seed=0)
    with pytest.raises(ValueError, match="Invalid mean_weight_decay value: 0.0 in param group 0"):
        decoupled.set_prior(x, torch.zeros(3), torch.ones(3))
    optimizer.set_prior(x, torch.zeros(3), torch.ones(3))
    optimizer.param_groups[0]["mean_weight_decay"] = 0.1  # set after the prior: refused at the step
    with optimizer.sampled_params(train=True):
        x.sum().backward()
    with pytest.raises(ValueError, match="Invalid mean_weight_decay value: 0.1"):
        optimizer.step()


def test_loaded_state_with_an_invalid_prior_is_rejected():
    x = nn.Parameter(torch.zeros(3))
    optimizer = IVON([x], lr=0.1, ess=10.0, seed=0)
    optimizer.set_prior(x, torch.zeros(3), torch.ones(3))
    state_dict = optimizer.state_dict()
    state_dict["state"][0]["prior_precision"] = torch.tensor([1.0, -2.0, 1.0])
    with pytest.raises(
        ValueError, match="Invalid prior precision for parameter 0 of param group 0 in the loaded state"
    ):
        IVON([nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0).load_state_dict(state_dict)
    del state_dict["state"][0]["prior_precision"]
    with pytest.raises(ValueError, match="has prior_mean but not both"):
        IVON([nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0).load_state_dict(state_dict)
