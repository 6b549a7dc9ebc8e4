"""IVONTrainer / IVONTrainerMixin on a tiny Llama with LoRA: gradient accumulation, clipping, saving."""

import json
import os

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

from ivon_lora import IVON, IVONTrainer, IVONTrainerMixin, IVONTrainingArguments, Posterior
from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model
from ivon_lora.modeling import apply_lora
from ivon_lora.choice import ChoiceCollator, ChoiceTrainer
from ivon_lora.config import ModelArguments


def _model(tokenizer):
    torch.manual_seed(0)  # LoRA's A matrices are initialised from the global RNG
    model_args = ModelArguments("builtin:tiny-llama", lora_rank=4, lora_dropout=0.0, lora_target=["q_proj", "v_proj"])
    return apply_lora(build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], tokenizer, seed=0), model_args)


def _dataset(examples):
    return datasets.Dataset.from_list(
        [{"prompt": e.prompt, "answers": list(e.answers), "gold": e.gold} for e in examples]
    )


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        ivon_ess=1e6,
        ivon_hess_init=1e-3,
        ivon_clip_radius=float("inf"),
        weight_decay=1e-4,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=7,
    )
    values.update(overrides)
    return IVONTrainingArguments(**values)


def _trainer(tmp_path, tokenizer, examples, trainer_class=ChoiceTrainer, **overrides):
    return trainer_class(
        model=_model(tokenizer),
        args=_args(tmp_path, **overrides),
        train_dataset=_dataset(examples),
        data_collator=ChoiceCollator(tokenizer),
        processing_class=tokenizer,
    )


def _adapter(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_equals_the_full_batch(tmp_path, llama_tokenizer, synthetic_examples, same_noise):
    examples = synthetic_examples["train"]
    full = _trainer(tmp_path / "full", llama_tokenizer, examples, per_device_train_batch_size=8)
    full.train()
    accumulated = _trainer(
        tmp_path / "ga", llama_tokenizer, examples, per_device_train_batch_size=2, gradient_accumulation_steps=4
    )
    accumulated.train()
    start = _adapter(_trainer(tmp_path / "init", llama_tokenizer, examples))
    full_params, accumulated_params = _adapter(full), _adapter(accumulated)
    for name, value in full_params.items():
        assert not torch.equal(value, start[name]) or "lora_B" not in name, f"{name} did not move"
        # float32 summation order differs (4 means of 2 vs 1 mean of 8); a 1/GA scaling bug would be off by 4x.
        torch.testing.assert_close(accumulated_params[name], value, rtol=1e-5, atol=1e-6 * value.abs().max(), msg=name)
    full_ivon, accumulated_ivon = full.ivon_optimizer, accumulated.ivon_optimizer
    for p_full, p_acc in zip(full_ivon.param_groups[0]["params"], accumulated_ivon.param_groups[0]["params"]):
        torch.testing.assert_close(
            accumulated_ivon.state[p_acc]["hess"], full_ivon.state[p_full]["hess"], rtol=1e-5, atol=0
        )


def test_max_grad_norm_clips_each_sample_inside_the_sampling_context(tmp_path, llama_tokenizer, synthetic_examples):
    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], max_steps=1, max_grad_norm=1e-4)
    trainer.train()
    ivon = trainer.ivon_optimizer
    beta1 = ivon.param_groups[0]["beta1"]
    # After one step the momentum is (1 - beta1) * g, with g the recorded (clipped) gradient.
    recorded = torch.cat([ivon.state[p]["momentum"].flatten() for p in ivon.param_groups[0]["params"]]) / (1 - beta1)
    assert 0 < recorded.norm() <= 1e-4 * (1 + 1e-4)


def test_ivon_mc_samples_runs_one_forward_backward_per_sample(tmp_path, llama_tokenizer, synthetic_examples):
    calls = []

    class CountingTrainer(ChoiceTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(len(inputs["labels"]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = _trainer(
        tmp_path, llama_tokenizer, synthetic_examples["train"], CountingTrainer,
        ivon_mc_samples=3, gradient_accumulation_steps=2, per_device_train_batch_size=4,
    )  # fmt: skip
    trainer.train()
    assert calls == [4] * (2 * 3 * 2)  # steps x accumulation x samples
    assert all(
        int(trainer.ivon_optimizer.state[p]["step"]) == 2 for p in trainer.ivon_optimizer.param_groups[0]["params"]
    )
    assert trainer.ivon_optimizer.num_pending_samples == 0


def test_mixin_gives_ivon_to_a_user_trainer_with_its_own_compute_loss(tmp_path, llama_tokenizer, synthetic_examples):
    """A user's Trainer subclass (own compute_loss, no ivon-lora code in it) gains IVON by inheritance."""
    from ivon_lora.choice import choice_logits

    class UserTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = choice_logits(model, inputs)
            return torch.nn.functional.cross_entropy(logits, inputs["labels"], label_smoothing=0.1)

    class UserIVONTrainer(IVONTrainerMixin, UserTrainer):
        pass

    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], UserIVONTrainer, max_steps=3)
    before = _adapter(trainer)
    trainer.train()
    assert isinstance(trainer.ivon_optimizer, IVON)
    assert int(trainer.ivon_optimizer.state[trainer.ivon_optimizer.param_groups[0]["params"][0]]["step"]) == 3
    assert any(not torch.equal(before[n], p) for n, p in _adapter(trainer).items())


def test_baseline_optimizer_through_the_same_trainer(tmp_path, llama_tokenizer, synthetic_examples):
    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], optim="adamw_torch", learning_rate=1e-3)
    trainer.train()
    assert trainer.ivon_optimizer is None
    assert "AdamW" in type(trainer.optimizer.optimizer).__name__


def test_fp16_is_refused_with_ivon(tmp_path):
    with pytest.raises(ValueError, match="fp16=True cannot be used with optim='ivon'"):
        IVONTrainingArguments(output_dir=str(tmp_path), fp16=True)


def test_invalid_ivon_mc_samples(tmp_path):
    with pytest.raises(ValueError, match="Invalid ivon_mc_samples value: 0"):
        IVONTrainingArguments(output_dir=str(tmp_path), ivon_mc_samples=0)


def test_default_args_and_the_default_ess(llama_tokenizer, synthetic_examples, tmp_path, monkeypatch, caplog):
    """The default ess is the train set size, raised so that the initial std is at most IVON-LoRA's 0.032."""
    monkeypatch.chdir(tmp_path)

    def ess(**args):
        trainer = IVONTrainer(
            model=_model(llama_tokenizer),
            args=IVONTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **args),
            train_dataset=_dataset(synthetic_examples["train"]),
            data_collator=ChoiceCollator(llama_tokenizer),
        )
        trainer.create_optimizer()
        return trainer.ivon_optimizer.param_groups[0]["ess"]

    trainer = IVONTrainer(model=_model(llama_tokenizer), train_dataset=_dataset(synthetic_examples["train"]),
                          data_collator=ChoiceCollator(llama_tokenizer))  # fmt: skip
    assert trainer.args.optim == "ivon" and trainer.args.learning_rate == 0.03
    # 64 examples at hess_init 1e-3 would give a std of 1/sqrt(0.064) = 4: raised to std 0.032.
    assert ess() == pytest.approx(1 / (0.032**2 * 1e-3))
    assert (ess() * 1e-3) ** -0.5 == pytest.approx(0.032)
    # Where the train set size already gives a narrow enough posterior, it is the default.
    assert ess(ivon_hess_init=1e4) == len(synthetic_examples["train"])
    with caplog.at_level("WARNING"):
        assert ess(ivon_ess=100.0) == 100.0  # an explicit ess is kept, with a warning saying why it is risky
    assert "initial posterior std of 3.2" in caplog.text and "raise ivon_ess" in caplog.text


def test_posterior_is_saved_next_to_the_adapter_at_checkpoints_and_at_the_end(
    tmp_path, llama_tokenizer, synthetic_examples
):
    from peft import PeftModel

    trainer = _trainer(
        tmp_path, llama_tokenizer, synthetic_examples["train"], max_steps=4, save_strategy="steps", save_steps=2
    )
    trainer.train()
    trainer.save_model()
    ivon = trainer.ivon_optimizer
    expected_variance = ivon.posterior_variance()
    for directory in (tmp_path / "checkpoint-2", tmp_path / "checkpoint-4", tmp_path):
        adapter = load_file(directory / "adapter_model.safetensors")
        variance = load_file(directory / "posterior.safetensors")
        assert set(variance) == set(adapter)
        assert all(variance[k].shape == adapter[k].shape for k in adapter)
        config = json.loads((directory / "posterior_config.json").read_text())
        assert config["ess"] == 1e6 and config["weight_decay"] == 1e-4
        assert config["step"] == int(directory.name.split("-")[-1]) if "checkpoint" in directory.name else 4
    # The final posterior equals the optimizer's, under the adapter's keys; it loads onto a fresh PEFT model.
    posterior = Posterior.load(str(tmp_path))
    reloaded = PeftModel.from_pretrained(
        build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], llama_tokenizer), str(tmp_path)
    )
    pairs = posterior.bind(reloaded)
    assert len(pairs) == len(expected_variance)
    saved = [posterior.variance[key] for key, _ in pairs]
    assert sorted(float(v.sum()) for v in saved) == pytest.approx(
        sorted(float(v.sum()) for v in expected_variance), rel=1e-6
    )
    for key, p in pairs:
        assert torch.equal(posterior.mean[key], p.detach()), f"{key}: the posterior mean is the saved adapter"
    assert os.path.isfile(tmp_path / "checkpoint-2" / "optimizer.pt")


def test_bf16_autocast_trains_with_float32_adapter_and_state(tmp_path, llama_tokenizer, synthetic_examples):
    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], bf16=True)
    before = _adapter(trainer)
    trainer.train()
    ivon = trainer.ivon_optimizer
    for p in ivon.param_groups[0]["params"]:
        assert p.dtype == torch.float32
        assert ivon.state[p]["hess"].dtype == torch.float32 and ivon.state[p]["momentum"].dtype == torch.float32
    assert any(not torch.equal(before[n], p) for n, p in _adapter(trainer).items())


def test_every_micro_batch_runs_under_no_sync_and_ivon_does_not_sync_on_one_process(
    tmp_path, llama_tokenizer, synthetic_examples
):
    """DDP must never all-reduce IVON's gradients (IVON syncs itself), not even on the last micro-batch."""
    import contextlib

    depth, inside = [0], []

    class RecordingTrainer(ChoiceTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inside.append(depth[0] > 0)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = _trainer(
        tmp_path, llama_tokenizer, synthetic_examples["train"], RecordingTrainer,
        gradient_accumulation_steps=2, per_device_train_batch_size=4,
    )  # fmt: skip
    no_sync = trainer.accelerator.no_sync

    @contextlib.contextmanager
    def recording_no_sync(model):
        depth[0] += 1
        try:
            with no_sync(model):
                yield
        finally:
            depth[0] -= 1

    trainer.accelerator.no_sync = recording_no_sync
    trainer.train()
    assert inside == [True] * 4  # 2 steps x 2 micro-batches, the last of each step included
    assert trainer.ivon_optimizer.data_parallel_world_size == 1


def _calibration_metrics(prediction):
    from ivon_lora.evaluation import calibration_metrics

    logits = torch.as_tensor(prediction.predictions).double()
    return calibration_metrics(torch.softmax(logits, dim=-1), torch.as_tensor(prediction.label_ids), (10,))


def test_evaluation_adds_the_sampled_predictive_and_leaves_the_noise_stream(
    tmp_path, llama_tokenizer, synthetic_examples
):
    from ivon_lora.evaluation import evaluate_predictive

    compute_metrics = _calibration_metrics
    examples = synthetic_examples["validation"][:24]
    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], ivon_eval_samples=3,
                       per_device_eval_batch_size=8)  # fmt: skip
    trainer.compute_metrics = compute_metrics
    trainer.train()
    noise_stream = trainer.ivon_optimizer.state_dict()["ivon"]["generator_states"]
    metrics = trainer.evaluate(_dataset(examples))
    after = trainer.ivon_optimizer.state_dict()["ivon"]["generator_states"]
    assert all(torch.equal(after[device], state) for device, state in noise_stream.items())
    model = trainer.accelerator.unwrap_model(trainer.model)
    posterior = Posterior.from_optimizer(trainer.ivon_optimizer, model)
    # The same three samples (seeded by `seed`), scored by the evaluation module.
    expected = evaluate_predictive(model, llama_tokenizer, examples, posterior, num_samples=3, seed=7, ece_bins=(10,))
    assert metrics["eval_accuracy"] == pytest.approx(expected["mean"]["accuracy"])
    for key in ("accuracy", "nll", "brier", "ece_10"):
        assert metrics[f"eval_sampled_{key}"] == pytest.approx(expected["sampled"][key], abs=1e-6)
    assert metrics["eval_sampled_nll"] != pytest.approx(metrics["eval_nll"], abs=1e-9)


def test_the_mixin_refuses_a_config_without_the_ivon_fields_and_takes_one_that_inherits_them(
    tmp_path, llama_tokenizer, synthetic_examples
):
    """A plain TrainingArguments (or e.g. TRL's SFTConfig) has no optim='ivon': training would silently be AdamW."""
    from dataclasses import dataclass, field

    from transformers import TrainingArguments

    plain = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(
        TypeError, match="ChoiceTrainer needs IVONTrainingArguments, got TrainingArguments.*inherits both"
    ):
        ChoiceTrainer(model=_model(llama_tokenizer), args=plain, train_dataset=_dataset(synthetic_examples["train"]))

    @dataclass
    class OtherConfig(TrainingArguments):
        other_field: int = field(default=3)

    @dataclass
    class IVONOtherConfig(IVONTrainingArguments, OtherConfig):
        pass

    args = IVONOtherConfig(output_dir=str(tmp_path), max_steps=1, ivon_ess=100.0, report_to="none", use_cpu=True,
                           remove_unused_columns=False, save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = ChoiceTrainer(model=_model(llama_tokenizer), args=args, train_dataset=_dataset(synthetic_examples["train"]),
                            data_collator=ChoiceCollator(llama_tokenizer))  # fmt: skip
    trainer.train()
    assert isinstance(trainer.ivon_optimizer, IVON) and trainer.args.other_field == 3


def test_an_iterable_dataset_needs_ivon_ess(tmp_path, llama_tokenizer, synthetic_examples):
    rows = [{"prompt": e.prompt, "answers": list(e.answers), "gold": e.gold} for e in synthetic_examples["train"]]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(rows)

    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], ivon_ess=None)
    trainer.train_dataset = Stream()
    with pytest.raises(ValueError, match="ivon_ess is not set.*Stream\\) has no length. Set ivon_ess"):
        trainer.create_optimizer()
    trainer.args.ivon_ess = 64.0
    assert trainer.create_optimizer().param_groups[0]["ess"] == 64.0


def test_learning_rate_defaults_to_ivons_only_with_ivon(tmp_path):
    """Unset, learning_rate is IVON-LoRA's 0.03 with optim='ivon' and TrainingArguments' 5e-5 with any other optimizer
    (an AdamW baseline without an explicit lr must not train at IVON's)."""
    assert IVONTrainingArguments(output_dir=str(tmp_path)).learning_rate == 0.03
    assert IVONTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch").learning_rate == 5e-5
    adamw = IVONTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", learning_rate=1e-3)
    assert adamw.learning_rate == 1e-3
    assert IVONTrainingArguments(output_dir=str(tmp_path), learning_rate=0.5).learning_rate == 0.5


def test_ivon_fields_are_validated_by_ivons_rules_under_their_own_names(tmp_path):
    """The optimizer's messages name the config's fields (learning_rate, not lr), and `optim` stays 'ivon' even when
    TrainingArguments' own validation refuses a value."""
    for field_name, value in (("learning_rate", float("nan")), ("ivon_beta2", 1.0), ("ivon_ess", 0.0),
                              ("ivon_clip_radius", 0.0), ("weight_decay", -1.0), ("ivon_seed", 1.5)):  # fmt: skip
        with pytest.raises(ValueError, match=f"Invalid {field_name} value: "):
            IVONTrainingArguments(output_dir=str(tmp_path), **{field_name: value})
    args = IVONTrainingArguments(output_dir=str(tmp_path))
    with pytest.raises(ValueError):
        args.eval_strategy, args.logging_steps, args.eval_steps = "steps", 0, None
        args.__post_init__()  # TrainingArguments' own check: steps evaluation needs eval_steps or logging_steps
    assert args.optim == "ivon" and args.use_ivon


def _two_eval_sets(examples):
    return {"first": _dataset(examples[:8]), "second": _dataset(examples[8:20])}


def test_a_dict_of_eval_sets_gets_each_its_own_sampled_metrics_once(tmp_path, llama_tokenizer, synthetic_examples):
    calls = []

    class CountingTrainer(ChoiceTrainer):
        def sampled_evaluation_metrics(self, eval_dataset, num_samples, ignore_keys, metric_key_prefix):
            calls.append(metric_key_prefix)
            return super().sampled_evaluation_metrics(eval_dataset, num_samples, ignore_keys, metric_key_prefix)

    eval_sets = _two_eval_sets(synthetic_examples["validation"])
    trainer = _trainer(tmp_path, llama_tokenizer, synthetic_examples["train"], CountingTrainer, ivon_eval_samples=2,
                       per_device_eval_batch_size=8, max_steps=1)  # fmt: skip
    trainer.compute_metrics = _calibration_metrics
    trainer.train()
    for passed, held in ((eval_sets, None), (None, eval_sets)):  # passed to evaluate, or the trainer's own
        calls.clear()
        trainer.eval_dataset = held
        metrics = trainer.evaluate(passed)
        assert calls == ["eval_first", "eval_second"]
        for name, dataset in eval_sets.items():
            alone = trainer.evaluate(dataset, metric_key_prefix=f"eval_{name}")
            for key in ("loss", "sampled_accuracy", "sampled_nll"):
                assert metrics[f"eval_{name}_{key}"] == pytest.approx(alone[f"eval_{name}_{key}"])
        assert not any(key.startswith("eval_sampled") for key in metrics)


@pytest.mark.parametrize("optim", ["ivon", "adamw_torch"])
def test_divergence_is_checked_once_per_optimizer_step_and_names_the_step(tmp_path, llama_tokenizer, synthetic_examples,
                                                                          optim, monkeypatch):  # fmt: skip
    """One host sync per optimizer step (not per micro-batch); a NaN loss in any micro-batch still stops the run."""
    from ivon_lora.errors import TrainingDivergedError

    syncs = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda value: syncs.append(value.numel()) or isfinite(value))
    overrides = dict(optim=optim, learning_rate=1e-3, gradient_accumulation_steps=3, per_device_train_batch_size=4,
                     max_steps=2)  # fmt: skip
    _trainer(tmp_path / "ok", llama_tokenizer, synthetic_examples["train"], **overrides).train()
    # Per step: 3 micro-batch losses and the gradient norms (IVON: each sample's; AdamW: the accumulated one).
    assert syncs == [6, 6] if optim == "ivon" else syncs == [4, 4]

    calls = []

    class NaNTrainer(ChoiceTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(None)
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if len(calls) == 5 else loss  # step 2's second micro-batch

    trainer = _trainer(tmp_path / "nan", llama_tokenizer, synthetic_examples["train"], NaNTrainer, **overrides)
    with pytest.raises(TrainingDivergedError, match="Training diverged at step 2: the training loss is NaN"):
        trainer.train()
    assert len(calls) == 6  # the step's micro-batches ran; the step itself was not applied
