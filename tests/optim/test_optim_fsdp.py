"""IVON on FSDP2-sharded parameters: 2 CPU processes (gloo), one torchrun launch of tests/optim/fsdp_worker.py.

Covered: sharded IVON (each rank's noise for its own shards, FSDP's reduce-scattered gradients recorded per
micro-batch, state on the shards) equals single-process IVON on the same global batches and noise over several
steps with gradient accumulation, without and with a sharded prior; the Hessian estimate converges on a quadratic
with a known Hessian; a distributed checkpoint resumes bitwise (every rank's generator included), through the Trainer
too, and after a rank is killed with SIGKILL and new processes resume from its last checkpoint; FSDP's deferred
gradient sync is refused; the posterior gathered from the shards equals the single-process one and loads as a run's.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "fsdp_worker.py")
TIMEOUT_S = 300


def _torchrun(out, *mode: str) -> tuple[int, str]:
    """Launch the worker on 2 processes (gloo) over `out`; its exit code and log."""
    # IVON_FSDP_DEVICE=cuda in the environment runs the same checks on GPUs with NCCL (scripts/gpu_check_fsdp.sh).
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, str(out),
               *mode]  # fmt: skip
    log_path = out / f"log{'-' + mode[0] if mode else ''}.txt"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(HERE),
                                   start_new_session=True)  # fmt: skip
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return process.returncode, log_path.read_text()


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    returncode, log_text = _torchrun(out)
    ranks = []
    for rank in range(2):
        path = out / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no results (torchrun exit {returncode}):\n{log_text[-6000:]}"
        ranks.append(torch.load(path, weights_only=False))
    assert returncode == 0, f"torchrun exit {returncode}:\n{log_text[-6000:]}"
    return out, ranks


def _result(launch, check):
    _, ranks = launch
    for rank, results in enumerate(ranks):
        entry = results.get(check)
        assert entry is not None, f"rank {rank} did not reach check {check!r}"
        assert entry["ok"], f"rank {rank}, check {check!r}:\n{entry['error']}"
    return [results[check]["result"] for results in ranks]


@pytest.mark.parametrize("variant", ["plain", "prior"])
def test_sharded_ivon_equals_single_process_ivon_on_the_same_global_batch_and_noise(launch, variant):
    for result in _result(launch, "equivalence"):
        run = result[variant]
        assert run["state_is_sharded"] and run["sharded_world_size"] == 2
        assert len(run["local_shapes"]) > 1  # the shards really are parts of the parameters
        assert run["mean_moved"] > 1e-3  # 3 steps of 2 micro-batches changed the adapter
        assert run["mean_max_diff"] < 1e-6 and run["hess_max_rel_diff"] < 1e-6


def test_an_optimizer_built_before_sharding_moves_its_state_to_the_swapped_in_shards(launch):
    """Accelerate builds the Trainer's optimizer on the plain model and swaps in the FSDP2 parameters afterwards."""
    for result in _result(launch, "equivalence"):
        assert result["swapped_equal"]


def test_sharded_hessian_estimate_converges_to_the_known_hessian(launch):
    rank0, rank1 = _result(launch, "hessian")
    assert torch.equal(rank0["estimate"], rank1["estimate"])  # gathered from the same shards
    ratio = rank0["estimate"] / rank0["curvature"]
    assert abs(float(ratio.mean()) - 1) < 0.05
    torch.testing.assert_close(rank0["estimate"], rank0["curvature"], rtol=0.25, atol=0.0)
    # Rank r's generator is seeded from (seed, r): the two halves of one sample are not the same draws.
    noise = rank0["first_noise"]
    assert not torch.allclose(noise[:100], noise[100:], rtol=0.5)


def test_a_distributed_checkpoint_resumes_bitwise_and_deferred_gradient_sync_is_refused(launch):
    for result in _result(launch, "resume"):
        assert result["bitwise"] and result["moved"]
        assert "gradient sync" in result["deferred_error"] and "every micro-batch" in result["deferred_error"]


def test_the_gathered_posterior_equals_the_single_process_one_and_loads_as_a_runs(launch):
    from ivon_lora.posterior import Posterior

    for result in _result(launch, "equivalence"):
        posterior = result["posterior"]
        assert posterior["keys_equal"] and posterior["step"] == 3
        assert posterior["mean_max_diff"] < 1e-6 and posterior["variance_max_rel_diff"] < 1e-6
    out, _ = launch
    loaded = Posterior.load(str(out / "posterior"))
    assert loaded.mean and all(v.shape == loaded.mean[k].shape for k, v in loaded.variance.items())
    assert all(bool((v > 0).all()) for v in loaded.variance.values())


def _saved(directory):
    from safetensors.torch import load_file

    return {name: load_file(directory / name) for name in ("adapter_model.safetensors", "posterior.safetensors")}


def test_through_the_trainer_fsdp2_equals_one_process_on_the_same_global_batch_and_noise(launch, tmp_path):
    """Accelerate's FSDP2 preparation under the Trainer (2 ranks x batch 4, 2 micro-batches, max_grad_norm 1): the
    saved adapter and the posterior gathered from the shards equal one process's at batch 8 with the same noise."""
    from fsdp_worker import trainer_run

    for result in _result(launch, "trainer"):
        assert result["sharded_world_size"] == 2 and result["state_is_sharded"]
        assert result["model_is_fsdp"].startswith("FSDP")
    out, _ = launch
    trainer_run(str(tmp_path / "single"), 1, replay=True)
    sharded, single = _saved(out / "trainer-replayed" / "final"), _saved(tmp_path / "single" / "final")
    for name in single:
        assert sharded[name].keys() == single[name].keys() and single[name]
        for key, value in single[name].items():
            torch.testing.assert_close(sharded[name][key], value, rtol=1e-5, atol=1e-7, msg=f"{name}: {key}")
    adapter = single["adapter_model.safetensors"]
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 1e-5  # it trained (B starts at 0)


def test_through_the_trainer_an_fsdp2_checkpoint_resumes_bitwise(launch):
    """The Trainer's FSDP2 checkpoint at step 2 (optimizer state and every rank's noise generator) resumed to step 4
    equals the uninterrupted run bitwise."""
    out, ranks = launch
    _result(launch, "trainer")
    assert "optimizer_0" in ranks[0]["trainer"]["result"]["checkpoint_files"] or any(
        name.startswith("optimizer") for name in ranks[0]["trainer"]["result"]["checkpoint_files"]
    )
    straight, resumed = _saved(out / "trainer-straight" / "final"), _saved(out / "trainer-resumed" / "final")
    for name in straight:
        for key, value in straight[name].items():
            assert torch.equal(resumed[name][key], value), f"{name}: {key} differs after the resume"


def test_through_the_trainer_an_fsdp2_run_killed_with_sigkill_resumes_to_the_uninterrupted_run(launch):
    """kill -9 of a rank at step 3 (torchrun takes the other down), then new processes resume from the step-2
    checkpoint: the final adapter and gathered posterior equal the uninterrupted run's bitwise."""
    out, _ = launch
    _result(launch, "trainer")
    returncode, log_text = _torchrun(out, "killed")
    killed = out / "trainer-killed"
    assert returncode != 0 and (killed / "checkpoint-2").is_dir() and not (killed / "final").exists(), log_text[-3000:]
    returncode, log_text = _torchrun(out, "resume")
    assert returncode == 0, log_text[-6000:]
    straight, resumed = _saved(out / "trainer-straight" / "final"), _saved(killed / "final")
    for name in straight:
        for key, value in straight[name].items():
            assert torch.equal(resumed[name][key], value), f"{name}: {key} differs after the kill and resume"
