"""A run killed after a checkpoint and resumed ends bitwise equal to an uninterrupted run (CPU, same seed)."""

import json
import os

import pytest
from safetensors.torch import load_file

from ivon_lora import cli
from ivon_lora.commands import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
# Dropout and gradient accumulation make the test also cover the RNG streams and the data order.
SETTINGS = ["max_steps=6", "save_strategy=steps", "save_steps=3", "per_device_train_batch_size=4",
            "gradient_accumulation_steps=2", "lora_dropout=0.1", "max_train_samples=64", "max_eval_samples=16",
            "final_eval_samples=2", "disable_tqdm=true", "logging_steps=1"]  # fmt: skip


class Killed(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(tmp_path, monkeypatch):
    assert cli.main(["train", DEMO, f"output_dir={tmp_path / 'straight'}", *SETTINGS]) == 0

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
        cli.main(["train", DEMO, f"output_dir={tmp_path / 'resumed'}", *SETTINGS])
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(train, "trainer_class", trainer_class)

    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    args = ["train", DEMO, f"output_dir={tmp_path / 'resumed'}", f"resume_from_checkpoint={checkpoint}", *SETTINGS]
    assert cli.main(args) == 0

    for name in ("adapter_model.safetensors", "posterior.safetensors"):
        straight, resumed = (load_file(tmp_path / run / name) for run in ("straight", "resumed"))
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert straight[key].equal(resumed[key]), f"{name}: {key} differs after resuming"
    straight, resumed = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("straight", "resumed"))
    assert straight["metrics"] == resumed["metrics"]
    # train_loss is the mean over every step, the steps before the resume included (the Trainer's own counts only
    # those after it): bitwise the uninterrupted run's, and the mean of the per-step losses it logged.
    assert straight["train"]["train_loss"] == resumed["train"]["train_loss"]
    state = json.loads((tmp_path / "straight" / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 6 and straight["train"]["train_loss"] == pytest.approx(sum(logged) / 6, rel=1e-6)
    assert json.loads((tmp_path / "resumed" / "posterior_config.json").read_text())["step"] == 6
