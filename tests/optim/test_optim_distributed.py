"""IVON under data parallelism: 2 CPU processes (gloo), one torchrun launch shared by every test of this file.

The launch runs tests/optim/distributed_worker.py; each test here checks one part of its results. Covered: IVON's own
synchronisation against the naive configuration on a quadratic with a known Hessian, bitwise-identical ranks,
the equivalence "W ranks = W Monte Carlo samples", rank-0-only checkpoints restoring every rank's noise, and the
HF Trainer (DDP never all-reduces, resume, the wrong configurations refused).
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from ivon_lora.optim import IVON
from ivon_lora.optim._state import derive_seed as _derive_seed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distributed_worker.py")
TIMEOUT_S = 480  # a normal launch takes 30-60 s on 2 cores


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Run the 2-process worker once; return {check: result} of both ranks."""
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, str(out)]
    with open(out / "log.txt", "w") as log:
        # A session of its own, so that a hung launch can be ended with all of its workers and nothing else.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(HERE),
                                   start_new_session=True)  # fmt: skip
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()  # torchrun forwards SIGTERM to its workers
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log_text = (out / "log.txt").read_text()
    ranks = []
    for rank in range(2):
        path = out / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no results (torchrun exit {process.returncode}):\n{log_text[-6000:]}"
        ranks.append(torch.load(path, weights_only=False))
    assert process.returncode == 0, f"torchrun exit {process.returncode}:\n{log_text[-6000:]}"
    return ranks


def _result(launch, check):
    for rank, results in enumerate(launch):
        entry = results.get(check)
        assert entry is not None, f"rank {rank} did not reach check {check!r}"
        assert entry["ok"], f"rank {rank}, check {check!r}:\n{entry['error']}"
    return [results[check]["result"] for results in launch]


def _assert_equal(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_equal(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{what}[{i}]")
    else:
        assert torch.equal(a, b), f"{what} differs"


# ------------------------------------------------------------------------------------------------ pure torch


def test_own_sync_estimates_the_hessian_and_the_naive_configuration_halves_it(launch):
    rank0, rank1 = _result(launch, "hessian")
    curvature = rank0["curvature"]
    # Single process, same settings: the reference the 2-process estimate must match.
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, len(curvature), dtype=torch.float64))
    center = x.detach().clone()
    single_ivon = IVON([x], lr=0.0, ess=100.0, hess_init=1.0, beta2=0.99, weight_decay=0.0, seed=0)
    single = torch.zeros_like(x)
    for step in range(1200):
        with single_ivon.sampled_params(train=True):
            (0.5 * curvature * (x - center) ** 2).sum().backward()
        single_ivon.step()
        if step >= 600:
            single += single_ivon.state[x]["hess"] / 600

    assert torch.equal(rank0["synced"], rank1["synced"])  # one update on identical averages: identical ranks
    synced_ratio, single_ratio = (rank0["synced"] / curvature).mean(), (single / curvature).mean()
    assert abs(synced_ratio - 1) < 0.03 and abs(single_ratio - 1) < 0.03
    assert abs(synced_ratio - single_ratio) < 0.03
    torch.testing.assert_close(rank0["synced"], curvature, rtol=0.2, atol=0.0)
    # Naive: per-rank noise with DDP-averaged gradients, E[eps_r * mean g] = E[eps * g] / W: half the Hessian.
    for naive in (rank0["naive"], rank1["naive"]):
        assert abs((naive / curvature).mean() - 0.5) < 0.03


def test_gradients_averaged_before_ivons_sync_are_reported(launch):
    for result in _result(launch, "hessian"):
        assert len(result["double_sync_warnings"]) == 1
        assert "identical on all 2 ranks" in result["double_sync_warnings"][0]
        assert "no_sync" in result["double_sync_warnings"][0]


def test_ranks_stay_bitwise_identical(launch):
    rank0, rank1 = _result(launch, "training_and_resume")
    for key in ("params_3", "state_3", "params_5", "state_5"):
        _assert_equal(rank0[key], rank1[key], key)
    assert rank0["state_5"][0]["step"].item() == 5


def test_two_ranks_equal_one_process_with_their_samples(launch):
    """W ranks, each one sample per micro-batch, = one process averaging the same W x GA samples."""
    from distributed_worker import SEED, mlp, params, rank_batches

    rank0, _ = _result(launch, "training_and_resume")
    model = mlp()
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.1, seed=SEED, data_parallel=False)
    generators = [torch.Generator().manual_seed(_derive_seed(SEED, 0, rank)) for rank in range(2)]
    current = {"rank": 0}
    optimizer._sample_noise = lambda _params, noise, std: noise.normal_(0.0, std, generator=generators[current["rank"]])
    for _ in range(3):
        for rank in range(2):
            current["rank"] = rank
            for inputs, targets in rank_batches(rank):
                with optimizer.sampled_params(train=True):
                    torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    for p, p_ranks in zip(params(model), rank0["params_3"]):
        torch.testing.assert_close(p_ranks, p, rtol=1e-12, atol=1e-14)  # float64; only the summation order differs


def test_two_ranks_with_a_prior_equal_one_process_with_their_samples(launch):
    """The same with a prior N(m0, 1/(ess * p0)) on every parameter (set_prior): the prior enters once per step."""
    from distributed_worker import SEED, mlp, params, rank_batches, set_test_priors

    rank0, rank1 = _result(launch, "training_with_prior")
    _assert_equal(rank0, rank1, "parameters and state (priors too) across ranks")
    model = mlp()
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.1, seed=SEED, data_parallel=False)
    set_test_priors(optimizer, model)
    generators = [torch.Generator().manual_seed(_derive_seed(SEED, 0, rank)) for rank in range(2)]
    current = {"rank": 0}
    optimizer._sample_noise = lambda _params, noise, std: noise.normal_(0.0, std, generator=generators[current["rank"]])
    for _ in range(3):
        for rank in range(2):
            current["rank"] = rank
            for inputs, targets in rank_batches(rank):
                with optimizer.sampled_params(train=True):
                    torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    for p, p_ranks in zip(params(model), rank0["params_3"]):
        torch.testing.assert_close(p_ranks, p, rtol=1e-12, atol=1e-14)
    assert all(set(s) == {"step", "momentum", "hess", "prior_mean", "prior_precision"} for s in rank0["state_3"])


def test_rank0_checkpoint_restores_every_ranks_noise(launch):
    rank0, rank1 = _result(launch, "training_and_resume")
    assert {"world_size", "generator_states_by_rank"} <= set(rank0["saved_ivon_keys"])
    assert rank0["saved_world_size"] == 2 and rank0["saved_num_rank_states"] == 2
    for result in (rank0, rank1):
        _assert_equal(result["resumed_params_5"], result["params_5"], "params after resuming")
        _assert_equal(result["resumed_state_5"], result["state_5"], "state after resuming")
        _assert_equal(result["resumed_noise_after_5"], result["noise_after_5"], "noise after resuming")
    assert not torch.equal(rank0["resumed_noise_after_5"][0], rank1["resumed_noise_after_5"][0])


def test_single_process_checkpoint_loads_on_every_rank(launch):
    rank0, rank1 = _result(launch, "single_process_checkpoint")
    _assert_equal(rank0["noise"], rank0["single_process_noise"], "rank 0's noise")  # continues the saved stream
    assert not torch.equal(rank0["noise"][0], rank1["noise"][0])  # rank 1 starts its own stream
    assert any("saved by 1 data-parallel process(es) is loaded by 2" in w for w in rank0["warnings"])


def test_different_sample_counts_fail_on_every_rank(launch):
    for result in _result(launch, "sample_count_mismatch"):
        assert result["error"] is not None and "different numbers of samples" in result["error"]
        assert "{0: 1, 1: 2}" in result["error"]


# ----------------------------------------------------------------------------------------- Hugging Face Trainer


def test_trainer_ranks_are_bitwise_identical_and_ddp_never_all_reduces(launch):
    rank0, rank1 = _result(launch, "hf_trainer")
    assert rank0["model_wrapped"] == "DistributedDataParallel"
    assert rank0["data_parallel_world_size"] == 2
    assert rank0["ddp_all_reduces"] == 0 and rank1["ddp_all_reduces"] == 0
    _assert_equal(rank0["straight"], rank1["straight"], "adapter and IVON state across ranks")
    assert all(int(s["step"]) == 4 for s in rank0["straight"]["state"])
    assert len(rank0["losses"]) == 4


def test_trainer_saves_once_and_resumes_every_rank_bitwise(launch):
    rank0, rank1 = _result(launch, "hf_trainer")
    for name in ("adapter_model.safetensors", "posterior.safetensors", "posterior_config.json"):
        assert name in rank0["saved_files"] and name in rank0["checkpoint_files"]
    assert "optimizer.pt" in rank0["checkpoint_files"]
    for result in (rank0, rank1):
        _assert_equal(result["resumed"], result["straight"], "resumed run vs straight run")


def test_trainer_with_a_prior_keeps_ranks_identical_and_resumes_bitwise(launch):
    """Continual finetuning under DDP: the previous posterior N(m, v) is every rank's prior (mean m, precision
    1 / (ess * v)), the ranks stay bitwise identical, and a run resumed from a checkpoint equals the straight one."""
    rank0, rank1 = _result(launch, "hf_trainer_prior")
    _assert_equal(rank0["straight"], rank1["straight"], "adapter and IVON state across ranks")
    for result in (rank0, rank1):
        _assert_equal(result["resumed"], result["straight"], "resumed run vs straight run")
    assert rank0["saved_prior_run"] == {"run_dir": rank0["saved_prior_run"]["run_dir"]}
    assert rank0["saved_prior_run"]["run_dir"].endswith("hf")
    # The prior is the hf_trainer run's posterior N(m_A, 1/(ess * (h_A + wd_A))), on this run's ess (also 1e6):
    # mean m_A, precision h_A + wd_A.
    previous = _result(launch, "hf_trainer")[0]["straight"]
    states = rank0["straight"]["state"]
    assert rank0["ess"] == 1e6 and len(states) == len(previous["state"]) == len(previous["adapter"])
    for state, mean, previous_state in zip(states, previous["adapter"].values(), previous["state"]):
        assert int(state["step"]) == 4
        assert torch.equal(state["prior_mean"], mean)
        torch.testing.assert_close(state["prior_precision"], previous_state["hess"] + 1e-4, rtol=1e-5, atol=0)


def test_trainer_refuses_ivon_without_its_sync_and_fsdp(launch):
    for messages in _result(launch, "hf_refusals"):
        assert "runs 2 data-parallel processes, but its IVON optimizer averages samples over 1" in messages["unsynced"]
        assert "underestimate the Hessian" in messages["unsynced"]
        assert "does not support fsdp without an accelerator" in messages["fsdp"]


def test_evaluation_is_sharded_without_dropping_or_repeating_an_example(launch):
    from distributed_worker import sharded_predictions

    ranks = _result(launch, "sharded_predictions")
    single = sharded_predictions()
    for result in ranks:  # every rank receives all 37 examples, in order, as one process computes them
        assert result["ids"] == single["ids"]
        torch.testing.assert_close(result["mean"], single["mean"], atol=1e-6, rtol=0)
        torch.testing.assert_close(result["samples"], single["samples"], atol=1e-6, rtol=0)


def test_token_level_loss_is_weighted_by_the_global_token_count(launch):
    """SFT on 2 ranks x GA 2 x batch 2 equals 1 process x batch 8 (same noise), though the micro-batches hold
    different numbers of loss tokens: each sample's gradient is weighted by its tokens over all ranks' tokens."""
    from distributed_worker import sft_token_weighted_run

    ranks = _result(launch, "sft_token_weighted")
    single = sft_token_weighted_run()
    assert len(set(ranks[0]["micro_batch_tokens"] + ranks[1]["micro_batch_tokens"])) > 1
    _assert_equal(ranks[0]["adapter"], ranks[1]["adapter"], "adapter across ranks")
    for name, value in single["adapter"].items():
        torch.testing.assert_close(ranks[0]["adapter"][name], value, rtol=1e-4, atol=1e-5 * value.abs().max(), msg=name)
    for distributed, one in zip(ranks[0]["state"], single["state"]):
        torch.testing.assert_close(distributed["hess"], one["hess"], rtol=1e-4, atol=0)
