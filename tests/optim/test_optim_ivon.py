"""Tests of ivon_lora.optim: equivalence with the reference implementation, known answers, checkpoints."""

import io
import math

import pytest
import torch
from torch import nn

from ivon_lora.optim import IVON


def _mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _data(dtype=torch.float64, n=32):
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(n, 5, generator=generator, dtype=dtype)
    targets = torch.randn(n, 3, generator=generator, dtype=dtype)
    return inputs, targets


def _loss(model, inputs, targets):
    return nn.functional.mse_loss(model(inputs), targets)


def _train(optimizer, model, num_steps, mc_samples=1, batch=None):
    inputs, targets = batch if batch is not None else _data(next(model.parameters()).dtype)
    for step in range(num_steps):
        for sample in range(mc_samples):
            with optimizer.sampled_params(train=True):
                rows = slice((step + sample) % 4 * 8, (step + sample) % 4 * 8 + 8)  # a different micro-batch
                _loss(model, inputs[rows], targets[rows]).backward()
        optimizer.step()


# ------------------------------------------------------------------------------------- reference oracle

ORACLE_CONFIGS = {
    "weight-decay": dict(
        groups=[
            dict(lr=0.05, ess=200.0, hess_init=0.5, beta1=0.9, beta2=0.99, weight_decay=1e-3, clip_radius=math.inf)
        ],
        rescale_lr=True,
        mc_samples=1,
    ),
    "clip-no-rescale-3-samples": dict(
        groups=[dict(lr=0.02, ess=50.0, hess_init=0.2, beta1=0.8, beta2=0.95, weight_decay=1e-2, clip_radius=1e-3)],
        rescale_lr=False,
        mc_samples=3,
    ),
    "two-groups": dict(
        groups=[
            dict(lr=0.1, ess=100.0, hess_init=1.0, beta1=0.9, beta2=0.99, weight_decay=1e-4, clip_radius=0.05),
            dict(lr=0.03, ess=400.0, hess_init=0.1, beta1=0.5, beta2=0.9, weight_decay=0.1, clip_radius=math.inf),
        ],
        rescale_lr=True,
        mc_samples=2,
    ),
}


@pytest.mark.parametrize("config", ORACLE_CONFIGS.values(), ids=ORACLE_CONFIGS.keys())
def test_matches_reference_implementation_given_the_same_noise(config):
    # ivon-opt (GPL-3.0+) is only a numerical oracle here; the library never imports it.
    import ivon

    model, oracle_model = _mlp(), _mlp()
    modules = [model[0], model[2]] if len(config["groups"]) == 2 else [model]
    oracle_modules = [oracle_model[0], oracle_model[2]] if len(config["groups"]) == 2 else [oracle_model]
    groups = [dict(params=list(m.parameters()), **hp) for m, hp in zip(modules, config["groups"])]
    oracle_groups = [dict(params=list(m.parameters()), **hp) for m, hp in zip(oracle_modules, config["groups"])]
    optimizer = IVON(groups, lr=0.0, ess=1.0, rescale_lr=config["rescale_lr"], seed=0)
    oracle = ivon.IVON(oracle_groups, lr=0.0, ess=1.0, rescale_lr=config["rescale_lr"])

    # The oracle draws torch.randn(group numel) per group from the global generator inside its context.
    # Regenerating that draw from the saved RNG state gives the standard normals it used, which our noise
    # hook then replays (scaled by the std it is asked for) for the corresponding parameters.
    replayed: dict[nn.Parameter, torch.Tensor] = {}

    def replay_noise(params, noise, std):
        noise.copy_(torch.cat([replayed[p].flatten() for p in params]) * std)

    optimizer._sample_noise = replay_noise

    inputs, targets = _data()
    for step in range(20):
        for sample in range(config["mc_samples"]):
            rows = slice((step + sample) % 4 * 8, (step + sample) % 4 * 8 + 8)
            rng_state = torch.get_rng_state()
            oracle_model.zero_grad(set_to_none=True)  # the oracle records .grad at exit but never clears it
            with oracle.sampled_params(train=True):
                _loss(oracle_model, inputs[rows], targets[rows]).backward()
            rng_after = torch.get_rng_state()
            torch.set_rng_state(rng_state)
            for group in groups:
                normals = torch.randn(sum(p.numel() for p in group["params"]), dtype=torch.float64)
                for param, z in zip(group["params"], normals.split([p.numel() for p in group["params"]])):
                    replayed[param] = z.view_as(param)
            torch.set_rng_state(rng_after)
            with optimizer.sampled_params(train=True):
                _loss(model, inputs[rows], targets[rows]).backward()
        oracle.step()
        optimizer.step()

    for group, oracle_group in zip(groups, oracle.param_groups):
        for param, oracle_param in zip(group["params"], oracle_group["params"]):
            torch.testing.assert_close(param, oracle_param, rtol=1e-6, atol=1e-12)
        hess = torch.cat([optimizer.state[p]["hess"].flatten() for p in group["params"]])
        momentum = torch.cat([optimizer.state[p]["momentum"].flatten() for p in group["params"]])
        torch.testing.assert_close(hess, oracle_group["hess"], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(momentum, oracle_group["momentum"], rtol=1e-6, atol=1e-12)
        assert not torch.equal(hess, torch.full_like(hess, group["hess_init"]))  # the test exercised h


# ------------------------------------------------------------------------------------------ known answers


def _quadratic_problem(num_elements=200):
    curvature = torch.linspace(0.5, 5.0, num_elements, dtype=torch.float64)
    center = torch.linspace(-1.0, 1.0, num_elements, dtype=torch.float64)
    return curvature, center


def test_hessian_estimate_converges_to_the_true_diagonal_hessian():
    curvature, center = _quadratic_problem()
    x = nn.Parameter(center.clone())
    optimizer = IVON([x], lr=0.0, ess=100.0, hess_init=1.0, beta2=0.998, weight_decay=0.0, seed=0)
    hess_average = torch.zeros_like(x)
    num_steps, num_averaged = 4000, 2000
    for step in range(num_steps):
        with optimizer.sampled_params(train=True):
            (0.5 * curvature * (x - center) ** 2).sum().backward()
        optimizer.step()
        if step >= num_steps - num_averaged:
            hess_average += optimizer.state[x]["hess"] / num_averaged
    torch.testing.assert_close(hess_average, curvature, rtol=0.1, atol=0.0)
    assert abs((hess_average / curvature).mean().item() - 1.0) < 0.02


def test_mean_converges_to_the_minimum():
    curvature, center = _quadratic_problem()
    x = nn.Parameter(torch.zeros_like(center))
    optimizer = IVON([x], lr=0.05, ess=1e4, hess_init=1.0, weight_decay=0.0, seed=0)
    for _ in range(500):
        with optimizer.sampled_params(train=True):
            (0.5 * curvature * (x - center) ** 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(x.detach(), center, rtol=0.0, atol=0.02)


def test_samples_have_the_posterior_variance():
    x = nn.Parameter(torch.zeros(100_000))
    optimizer = IVON([x], lr=0.1, ess=50.0, hess_init=3.0, weight_decay=1.0, seed=0)
    (variance,) = optimizer.posterior_variance()
    torch.testing.assert_close(variance, torch.full_like(x, 1 / (50.0 * (3.0 + 1.0))))
    with optimizer.sampled_params():
        sample = x.detach().clone()
    assert torch.equal(x, torch.zeros_like(x))
    assert abs(sample.var().item() / variance[0].item() - 1.0) < 0.02
    assert abs(sample.mean().item()) < 0.01 * variance[0].item() ** 0.5 * 5


def test_step_averages_the_recorded_samples():
    x = nn.Parameter(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    ess, hess_init, wd, beta1, beta2 = 10.0, 0.5, 0.1, 0.9, 0.9
    optimizer = IVON([x], lr=0.1, ess=ess, hess_init=hess_init, beta1=beta1, beta2=beta2, weight_decay=wd, seed=0)
    grads = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, 0.0]), torch.tensor([4.0, -2.0, 1.0])]
    noise = []
    for grad in grads:
        with optimizer.sampled_params(train=True):
            noise.append(x.detach() - torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
            x.grad = grad.to(torch.float64)
    assert optimizer.num_pending_samples == 3
    optimizer.step()
    assert optimizer.num_pending_samples == 0

    mean_grad = torch.stack(grads).to(torch.float64).mean(0)
    mean_nxg = (torch.stack(noise) * torch.stack(grads)).mean(0)
    hess_hat = ess * (hess_init + wd) * mean_nxg
    expected_hess = (
        beta2 * hess_init
        + (1 - beta2) * hess_hat
        + 0.5 * (1 - beta2) ** 2 * (hess_init - hess_hat) ** 2 / (hess_init + wd)
    )
    torch.testing.assert_close(optimizer.state[x]["momentum"], (1 - beta1) * mean_grad)
    torch.testing.assert_close(optimizer.state[x]["hess"], expected_hess)


@pytest.mark.parametrize("mean_weight_decay, moves", [(None, True), (0.0, False)])
def test_mean_weight_decay_replaces_weight_decay_in_the_mean_update_only(mean_weight_decay, moves):
    x = nn.Parameter(torch.ones(4))
    optimizer = IVON([x], lr=0.1, ess=1e6, weight_decay=0.5, mean_weight_decay=mean_weight_decay, seed=0)
    with optimizer.sampled_params(train=True):
        pass  # no gradient: only weight decay acts on the mean
    optimizer.step()
    assert (not torch.equal(x, torch.ones(4))) == moves
    assert torch.equal(optimizer.posterior_variance()[0], optimizer.state[x]["hess"].add(0.5).mul(1e6).reciprocal())


# ------------------------------------------------------------------------------------- implementations


def _mixed_params():
    generator = torch.Generator().manual_seed(7)
    shapes = [(16, 40), (40, 16), (7,), (3, 5, 2)]
    float32 = [nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    float64 = [nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64)) for s in shapes[:2]]
    return float32, float64


def _run_with_mixed_params(foreach, num_steps=6):
    float32, float64 = _mixed_params()
    params = float32 + float64
    optimizer = IVON(
        [
            dict(params=float32[:2] + float64[:1]),
            dict(params=float32[2:] + float64[1:], lr=0.01, weight_decay=0.0, mean_weight_decay=0.01),
        ],
        lr=0.1,
        ess=30.0,
        beta2=0.9,
        weight_decay=0.01,
        clip_radius=0.02,
        seed=3,
        foreach=foreach,
    )
    for step in range(num_steps):
        for _ in range(2):
            with optimizer.sampled_params(train=True):
                loss = sum((p.sin() * (i + 1)).sum() for i, p in enumerate(params) if i != step % len(params))
                loss.backward()  # one parameter gets no gradient each step
        optimizer.step()
    return params, optimizer


def test_foreach_matches_for_loop_with_mixed_shapes_and_dtypes():
    params_foreach, optimizer_foreach = _run_with_mixed_params(foreach=True)
    params_loop, optimizer_loop = _run_with_mixed_params(foreach=False)
    for p_foreach, p_loop in zip(params_foreach, params_loop):
        assert p_foreach.dtype == optimizer_foreach.state[p_foreach]["hess"].dtype
        assert torch.equal(p_foreach, p_loop)
        for key in ("step", "momentum", "hess"):
            assert torch.equal(optimizer_foreach.state[p_foreach][key], optimizer_loop.state[p_loop][key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_params_on_several_devices():
    cpu, cuda = nn.Parameter(torch.randn(10)), nn.Parameter(torch.randn(10, device="cuda"))
    optimizer = IVON([cpu, cuda], lr=0.1, ess=10.0, seed=0)
    for _ in range(3):
        with optimizer.sampled_params(train=True):
            (cpu.sum() + cuda.sum()).backward()
        optimizer.step()
    assert optimizer.state[cuda]["hess"].device == cuda.device
    assert set(optimizer.state_dict()["ivon"]["generator_states"]) == {"cpu", str(cuda.device)}


# -------------------------------------------------------------------------------- state and checkpoints


def test_resumed_run_continues_the_same_trajectory_bitwise():
    def build(seed):
        model = _mlp(torch.float32)
        optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, beta2=0.99, clip_radius=0.1, seed=seed)
        return model, optimizer

    model, optimizer = build(seed=11)
    _train(optimizer, model, num_steps=8, mc_samples=2)

    model, optimizer = build(seed=11)
    _train(optimizer, model, num_steps=5, mc_samples=2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    _train(optimizer, model, num_steps=3, mc_samples=2)  # uninterrupted

    resumed_model, resumed_optimizer = build(seed=999)  # the seed comes from the checkpoint
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    _train(resumed_optimizer, resumed_model, num_steps=3, mc_samples=2)

    for p, resumed_p in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, resumed_p)
        for key in ("step", "momentum", "hess"):
            assert torch.equal(optimizer.state[p][key], resumed_optimizer.state[resumed_p][key])
    assert optimizer.state[next(model.parameters())]["step"].item() == 8
    with optimizer.sampled_params(), resumed_optimizer.sampled_params():
        for p, resumed_p in zip(model.parameters(), resumed_model.parameters()):
            assert torch.equal(p, resumed_p)  # the generators continue identically


def test_state_dict_holds_only_the_optimizer_state():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, seed=5)
    _train(optimizer, model, num_steps=1)
    state_dict = optimizer.state_dict()
    assert all(set(s) == {"step", "momentum", "hess"} for s in state_dict["state"].values())
    assert state_dict["ivon"]["seed"] == 5
    assert state_dict["ivon"]["generator_states"]["cpu"].dtype == torch.uint8
    assert state_dict["param_groups"][0]["ess"] == 100.0


def test_sampling_and_stepping_leave_the_global_rng_alone():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=100.0)  # seed=None must not draw either
    rng_state = torch.get_rng_state()
    _train(optimizer, model, num_steps=2, mc_samples=2)
    with optimizer.sampled_params():
        pass
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_exception_inside_sampled_params_restores_the_means_and_records_nothing():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=10.0, seed=0)
    means = [p.detach().clone() for p in model.parameters()]
    storages = [p.data_ptr() for p in model.parameters()]
    inputs, targets = _data(torch.float32)
    with pytest.raises(ValueError, match="boom"):
        with optimizer.sampled_params(train=True):
            _loss(model, inputs, targets).backward()
            assert not torch.equal(model[0].weight, means[0])
            raise ValueError("boom")
    assert all(torch.equal(p, mean) for p, mean in zip(model.parameters(), means))
    assert [p.data_ptr() for p in model.parameters()] == storages
    assert optimizer.num_pending_samples == 0
    assert all(p.grad is not None for p in model.parameters())  # left alone
    with pytest.raises(RuntimeError, match="no recorded sample"):
        optimizer.step()


def test_nested_sampled_params_is_an_error():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=10.0, seed=0)
    means = [p.detach().clone() for p in model.parameters()]
    with optimizer.sampled_params():
        with pytest.raises(RuntimeError, match="already active"):
            with optimizer.sampled_params():
                pass
    assert all(torch.equal(p, mean) for p, mean in zip(model.parameters(), means))


def test_step_with_closure_returns_the_mean_loss():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=1e4, mc_samples=3, seed=0)
    inputs, targets = _data(torch.float32)
    losses = []

    def closure():
        loss = _loss(model, inputs, targets)
        loss.backward()
        losses.append(loss.detach())
        return loss

    loss = optimizer.step(closure)
    assert len(losses) == 3
    torch.testing.assert_close(loss, torch.stack(losses).mean())
    assert optimizer.state[model[0].weight]["step"].item() == 1
    assert all(p.grad is None for p in model.parameters())


def test_step_without_recorded_samples_raises():
    optimizer = IVON([nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0)
    with pytest.raises(RuntimeError, match=r"sampled_params\(train=True\)"):
        optimizer.step()


# ------------------------------------------------------------------------------------------- validation

INVALID_HYPERPARAMETERS = [
    ("lr", -0.1),
    ("ess", 0.0),
    ("ess", -1.0),
    ("hess_init", 0.0),
    ("beta1", 1.0),
    ("beta1", -0.1),
    ("beta2", 1.0),
    ("weight_decay", -1e-4),
    ("mean_weight_decay", -1.0),
    ("mc_samples", 0),
    ("mc_samples", 1.5),
    ("clip_radius", 0.0),
    ("rescale_lr", "yes"),
    ("seed", 1.5),
    ("foreach", "auto"),
    ("lr", float("nan")),
    ("data_parallel", "yes"),
]


@pytest.mark.parametrize("name, value", INVALID_HYPERPARAMETERS)
def test_invalid_hyperparameters_are_rejected(name, value):
    kwargs = dict(lr=0.1, ess=10.0)
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"^Invalid {name} value: {value}$"):
        IVON([nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_group_hyperparameter_is_rejected():
    groups = [dict(params=[nn.Parameter(torch.zeros(2))]), dict(params=[nn.Parameter(torch.zeros(2))], ess=-1.0)]
    with pytest.raises(ValueError, match="^Invalid ess value: -1.0$"):
        IVON(groups, lr=0.1, ess=10.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_params_are_rejected(dtype):
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=dtype))]
    with pytest.raises(ValueError, match=f"parameter 1 of param group 0 is {dtype}.*float32.*autocast"):
        IVON(params, lr=0.1, ess=10.0)


def test_deepcopy_keeps_the_generator_state():
    import copy

    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, seed=2)
    _train(optimizer, model, num_steps=2)
    clone = copy.deepcopy({"model": model, "optimizer": optimizer})
    _train(optimizer, model, num_steps=2)
    _train(clone["optimizer"], clone["model"], num_steps=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), clone["model"].parameters()))


# ------------------------------------------------------------------- data parallelism (single-process side)
# The 2-process behaviour is tested in test_distributed.py.


def test_without_torch_distributed_ivon_is_a_single_process_optimizer():
    model = _mlp(torch.float32)
    optimizer = IVON(model.parameters(), lr=0.05, ess=100.0, seed=5)  # data_parallel=None: sync if initialized
    _train(optimizer, model, num_steps=1)
    assert optimizer.data_parallel_world_size == 1
    assert set(optimizer.state_dict()["ivon"]) == {"seed", "generator_states"}  # the single-process format


def test_data_parallel_true_needs_an_initialized_process_group():
    optimizer = IVON([nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0, data_parallel=True)
    needs_init = r"data_parallel=True\) needs torch.distributed to be initialized"
    with pytest.raises(RuntimeError, match=needs_init), optimizer.sampled_params(train=True):
        pass


def test_process_group_without_data_parallel_is_rejected():
    with pytest.raises(ValueError, match="process_group and data_parallel=False"):
        IVON([nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0, data_parallel=False, process_group=object())


def test_rank_zero_draws_the_noise_of_a_single_process_and_other_ranks_their_own():
    from ivon_lora.optim._state import derive_seed as _derive_seed

    assert _derive_seed(7, 0, rank=0) == 7 and _derive_seed(7, 1, rank=0) == _derive_seed(7, 1)
    seeds = {_derive_seed(7, device, rank) for device in range(2) for rank in range(4)}
    assert len(seeds) == 8


def test_param_groups_may_carry_other_keys_also_after_load_state_dict():
    """torch.optim's contract: a group dict may hold keys of the caller's (e.g. a name), and load_state_dict()
    adds `differentiable` to `defaults`; neither may make add_param_group raise."""
    a, b, c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    optimizer = IVON([{"params": [a], "name": "lora_A"}], lr=0.1, ess=10.0)
    optimizer.add_param_group({"params": [b], "name": "lora_B", "ess": 20.0})
    assert [g["name"] for g in optimizer.param_groups] == ["lora_A", "lora_B"]
    with optimizer.sampled_params(train=True):
        (a.sum() + b.sum()).backward()
    optimizer.step()
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.add_param_group({"params": [c], "name": "head"})
    assert optimizer.param_groups[2]["ess"] == 10.0
    with pytest.raises(ValueError, match="Invalid ess value: -1.0"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "ess": -1.0, "name": "x"})


def test_mc_samples_is_one_value_for_all_groups():
    """A sample perturbs every group at once: a per-group mc_samples was silently ignored (group 0's ruled)."""
    a, b = (torch.nn.Parameter(torch.randn(3)) for _ in range(2))
    with pytest.raises(ValueError, match=r"Invalid mc_samples values per param group: \[1, 3\]"):
        IVON([{"params": [a]}, {"params": [b], "mc_samples": 3}], lr=0.1, ess=10.0)
    optimizer = IVON([{"params": [a]}, {"params": [b]}], lr=0.1, ess=10.0, mc_samples=2)
    optimizer.param_groups[1]["mc_samples"] = 4  # e.g. set by a scheduler-like hook after construction
    with pytest.raises(ValueError, match=r"per param group: \[2, 4\]"):
        optimizer.step(lambda: (a.sum() + b.sum()).backward())


def test_default_foreach_asks_torch_which_devices_have_foreach_kernels(monkeypatch):
    """As torch.optim: foreach by default only where torch has the kernels (not CPU, not e.g. the meta device)."""
    import sys

    ivon_module = sys.modules["ivon_lora.optim.ivon"]  # the package's `ivon` attribute is the functional
    meta, cpu = torch.empty(3, device="meta"), torch.empty(3)
    assert not ivon_module._default_foreach([cpu]) and not ivon_module._default_foreach([meta])
    monkeypatch.setattr(ivon_module, "_get_foreach_kernels_supported_devices", lambda: ["meta"])
    assert ivon_module._default_foreach([meta]) and not ivon_module._default_foreach([meta, cpu])


def test_the_noise_and_data_parallel_helpers_use_ivons_sampling_state_not_its_private_members():
    """_rng and _distributed read and write the SamplingState that IVON owns, never IVON's own attributes."""
    import ast
    import os

    from ivon_lora.optim import _distributed, _rng, _state

    for module in (_rng, _distributed):
        tree = ast.parse(open(module.__file__).read())
        touched = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                          and isinstance(node.value, ast.Name) and node.value.id in ("optimizer", "ivon", "self")
                          and node.attr.startswith("_")})  # fmt: skip
        assert touched == [], f"{os.path.basename(module.__file__)} touches {touched}"
    optimizer = IVON([torch.nn.Parameter(torch.zeros(3))], lr=0.1, ess=10.0, seed=5)
    assert isinstance(optimizer._sampling_state, _state.SamplingState) and optimizer._sampling_state.seed == 5
    assert set(optimizer.state_dict()["ivon"]) == {"seed", "generator_states"}  # the format is unchanged


def test_the_optimizers_modules_import_each_other_as_a_tree_with_their_shared_types_in_one_leaf():
    """Inside ivon_lora/optim, every import (TYPE_CHECKING ones too, which tests/test_imports.py leaves out) goes
    down: _state imports no module of the optimizer, _rng and _distributed only _state, ivon.py the three."""
    import ast
    import os

    import ivon_lora.optim as package

    folder = os.path.dirname(package.__file__)
    edges = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, name)).read())
            edges[name[:-3]] = sorted({node.module.split(".")[-1] for node in ast.walk(tree)
                                       if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module})  # fmt: skip
    assert edges == {"__init__": ["ivon"], "_distributed": ["_state"], "_rng": ["_state"], "_state": [],
                     "ivon": ["_distributed", "_rng", "_state"]}  # fmt: skip
