"""Continual finetuning through `ivon-lora train`: prior_from (the previous posterior as the prior, the adapter
starting at its mean), init_from (the previous adapter, the usual prior), provenance in every report, a resumed
run with a prior bitwise equal to an uninterrupted one, and a mismatched previous run refused before the model loads.
(The optimizer's prior: tests/optim/test_optim_prior.py; under DDP: tests/optim/test_optim_distributed.py.)"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from ivon_lora import cli
from ivon_lora.commands import train
from ivon_lora.posterior import Posterior, adapter_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
DEMO_SFT = os.path.join(ROOT, "recipes", "demo-sft.yaml")
# The shape of conftest's run_dir / adamw_run_dir (q/v LoRA r=4): a run can only start from an adapter of its shape.
SHAPE = ["lora_target=[q_proj, v_proj]", "lora_rank=4"]
SHORT = ["max_train_samples=64", "max_eval_samples=16", "final_eval_samples=2", "disable_tqdm=true", *SHAPE]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _check_optimizer_prior(previous, new, checkpoint, prior_scale):
    """The optimizer's prior (from the checkpoint's optimizer state): mean m_A, precision prior_scale / (ess * v_A);
    the saved variance is 1 / (ess * (h + p0))."""
    ess = new.config["ess"]
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"].values()
    assert len(state) == len(previous.mean)
    for entry in state:
        (key,) = [k for k, m in previous.mean.items() if m.shape == entry["prior_mean"].shape
                  and torch.equal(m, entry["prior_mean"])]  # fmt: skip
        torch.testing.assert_close(entry["prior_precision"], prior_scale / (ess * previous.variance[key]), rtol=1e-6,
                                   atol=0)  # fmt: skip
        torch.testing.assert_close(new.variance[key], 1 / (ess * (entry["hess"] + entry["prior_precision"])),
                                   rtol=1e-6, atol=0)  # fmt: skip


def test_prior_from_starts_at_the_previous_mean_with_its_posterior_as_the_prior(run_dir, tmp_path):
    out = tmp_path / "b"
    # lr 0: the mean never moves, so the saved adapter is where the run started.
    args = ["train", DEMO, f"output_dir={out}", f"prior_from={run_dir}", "prior_scale=2", "learning_rate=0", "max_steps=3",
            "save_strategy=steps", "save_steps=3", *SHORT]  # fmt: skip
    assert cli.main(args) == 0
    previous, new = Posterior.load(run_dir), Posterior.load(str(out))
    assert all(torch.equal(new.mean[key], mean) for key, mean in previous.mean.items())
    _check_optimizer_prior(previous, new, out / "checkpoint-3", prior_scale=2.0)
    expected = {"key": "prior_from", "run_dir": os.path.abspath(run_dir), "optimizer": "ivon",
                "adapter_sha256": adapter_hash(previous.mean), "ess": previous.config["ess"],
                "weight_decay": previous.config["weight_decay"], "step": 30, "prior_scale": 2.0}  # fmt: skip
    assert _json(out / "posterior_config.json")["prior_run"] == expected
    assert _json(out / "metrics.json")["prior_run"] == expected
    assert _json(out / "metrics.json")["recipe"]["prior_from"] == run_dir
    assert _json(out / "checkpoint-3" / "posterior_config.json")["prior_run"] == expected

    evaluated = tmp_path / "eval"
    assert cli.main(["eval", str(out), "--out", str(evaluated), "--samples", "2", "--limit", "8"]) == 0
    assert _json(evaluated / "eval.json")["runs"]["ivon"]["prior_run"] == expected


def test_prior_from_trains_and_keeps_what_the_prior_knew(run_dir, tmp_path):
    """A real update (lr > 0): the run moves from the previous mean, less with a sharper prior."""
    moved = {}
    for scale in (1.0, 1000.0):
        out = tmp_path / f"scale{scale:g}"
        assert cli.main(["train", DEMO, f"output_dir={out}", f"prior_from={run_dir}", f"prior_scale={scale}",
                         "max_steps=6", "learning_rate=0.05", *SHORT]) == 0  # fmt: skip
        new, previous = (
            load_file(out / "adapter_model.safetensors"),
            load_file(os.path.join(run_dir, "adapter_model.safetensors")),
        )
        moved[scale] = sum(float((new[k] - previous[k]).norm()) for k in new)
    assert 0 < moved[1000.0] < moved[1.0]


def test_init_from_starts_an_adamw_run_at_the_previous_adapter(adamw_run_dir, tmp_path):
    out = tmp_path / "adamw-b"
    args = ["train", DEMO, f"output_dir={out}", f"init_from={adamw_run_dir}", "optim=adamw_torch", "learning_rate=0",
            "max_steps=2", *SHORT]  # fmt: skip
    assert cli.main(args) == 0
    previous, new = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (adamw_run_dir, out))
    assert all(torch.equal(new[k], previous[k]) for k in previous)
    record = _json(out / "metrics.json")["prior_run"]
    assert record == {"key": "init_from", "run_dir": os.path.abspath(adamw_run_dir), "optimizer": "adamw_torch",
                      "adapter_sha256": adapter_hash(previous)}  # fmt: skip


class Killed(Exception):
    pass


def test_resumed_run_with_a_prior_is_bitwise_equal_to_an_uninterrupted_one(run_dir, tmp_path, monkeypatch):
    settings = [f"prior_from={run_dir}", "prior_scale=0.5", "max_steps=6", "save_strategy=steps", "save_steps=3",
                "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "lora_dropout=0.1", "logging_steps=1",
                *SHORT]  # fmt: skip
    assert cli.main(["train", DEMO, f"output_dir={tmp_path / 'straight'}", *settings]) == 0
    trainer_class = train.trainer_class

    def killed_after_the_first_checkpoint(objective="choice"):
        class KilledTrainer(trainer_class(objective)):
            def training_step(self, *args, **kwargs):
                if self.state.global_step == 4:
                    raise Killed
                return super().training_step(*args, **kwargs)

        return KilledTrainer

    monkeypatch.setattr(train, "trainer_class", killed_after_the_first_checkpoint)
    with pytest.raises(Killed):
        cli.main(["train", DEMO, f"output_dir={tmp_path / 'resumed'}", *settings])
    monkeypatch.setattr(train, "trainer_class", trainer_class)
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    assert _json(checkpoint / "posterior_config.json")["prior_run"]["run_dir"] == os.path.abspath(run_dir)
    args = ["train", DEMO, f"output_dir={tmp_path / 'resumed'}", f"resume_from_checkpoint={checkpoint}", *settings]
    assert cli.main(args) == 0
    for name in ("adapter_model.safetensors", "posterior.safetensors"):
        straight, resumed = (load_file(tmp_path / run / name) for run in ("straight", "resumed"))
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert straight[key].equal(resumed[key]), f"{name}: {key} differs after resuming"
    straight, resumed = (_json(tmp_path / run / "metrics.json") for run in ("straight", "resumed"))
    assert straight["metrics"] == resumed["metrics"] and straight["prior_run"] == resumed["prior_run"]


def test_sft_run_with_the_posterior_of_an_sft_run_as_prior(tmp_path):
    common = ["max_train_samples=24", "max_eval_samples=8", "final_eval_samples=2", "disable_tqdm=true"]
    first, second = tmp_path / "sft-a", tmp_path / "sft-b"
    assert cli.main(["train", DEMO_SFT, f"output_dir={first}", "max_steps=3", *common]) == 0
    assert cli.main(["train", DEMO_SFT, f"output_dir={second}", f"prior_from={first}", "learning_rate=0", "max_steps=2",
                     "save_strategy=steps", "save_steps=2", *common]) == 0  # fmt: skip
    previous, new = Posterior.load(str(first)), Posterior.load(str(second))
    assert all(torch.equal(new.mean[k], previous.mean[k]) for k in previous.mean)
    _check_optimizer_prior(previous, new, second / "checkpoint-2", prior_scale=1.0)
    assert _json(second / "metrics.json")["prior_run"]["adapter_sha256"] == adapter_hash(previous.mean)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["prior_from={adamw}"], "has no posterior (posterior.safetensors): it was trained with optim: adamw_torch"),
        (["prior_from={ivon}", "lora_rank=8"], "was trained with lora_rank: 4, this recipe has 8"),
        (["prior_from={ivon}", "lora_target=[q_proj]"], "was trained with lora_target: ['q_proj', 'v_proj']"),
        (["prior_from={ivon}", "model_name_or_path=builtin:tiny-qwen2"], "model_name_or_path: 'builtin:tiny-llama'"),
        (["prior_from={ivon}", "optim=adamw_torch"], "needs optim: ivon"),
        (["prior_from={missing}"], "does not exist"),
        (["init_from={empty}"], "is not a finished run or checkpoint dir: adapter_config.json is missing"),
        (["prior_from={ivon}", "init_from={ivon}"], "prior_from and init_from cannot be combined"),
        (["prior_from={ivon}", "prior_scale=0"], "Invalid prior_scale value: 0 (must be in (0, 1000000])"),
        (["prior_from={ivon}", "ivon_mean_weight_decay=0.1"], "cannot be combined with ivon_mean_weight_decay"),
    ],
)
def test_a_mismatched_previous_run_is_one_line_before_the_model_loads(
    overrides, message, run_dir, adamw_run_dir, tmp_path, capsys, monkeypatch
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the previous run was checked")

    monkeypatch.setattr(train, "_load_model", no_model)
    (tmp_path / "empty").mkdir()
    dirs = {"ivon": run_dir, "adamw": adamw_run_dir, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    out = tmp_path / "out"
    args = ["train", DEMO, f"output_dir={out}", *SHORT, *(o.format(**dirs) for o in overrides)]
    assert cli.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()
