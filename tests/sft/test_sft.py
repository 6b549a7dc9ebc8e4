"""IVONSFTTrainer / IVONSFTConfig (TRL's SFT with IVON) on tiny Llama and Qwen2 stand-ins with their chat templates:
token-weighted gradient accumulation, the S-sample predictive's validation loss, TRL's data paths."""

import math

import datasets
import pytest
import torch
from family_tokenizers import llama3_tokenizer, qwen_tokenizer
from trl import SFTConfig

from ivon_lora import Posterior
from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model
from ivon_lora.config import ModelArguments
from ivon_lora.modeling import apply_lora
from ivon_lora.sft import IVONSFTConfig, IVONSFTTrainer
from ivon_lora.sft.likelihood import predictive_loss_metrics, predictive_losses, sequence_log_likelihoods

WORDS = "the cat sat on a mat while dogs ran past seven green trees near old river banks".split()


@pytest.fixture(scope="module")
def llama3():
    # Llama-3 ships without a pad token; TRL would set one on first use (to EOS), and models built after that
    # would zero the EOS embedding row (pad_token_id): give it Llama-3's own reserved pad token up front.
    tokenizer = llama3_tokenizer()
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    return tokenizer


@pytest.fixture(scope="module")
def qwen25():
    return qwen_tokenizer(thinking=False)


def _model(tokenizer, family="builtin:tiny-llama"):
    torch.manual_seed(0)  # LoRA's A matrices are initialised from the global RNG
    model_args = ModelArguments(family, lora_rank=4, lora_dropout=0.0, lora_target=["q_proj", "v_proj"])
    return apply_lora(build_tiny_model(BUILTIN_MODELS[family], tokenizer, seed=0), model_args)


def _conversations(count=16, seed=0):
    """Chats whose answers have very different lengths (1 to 12 words), so per-micro-batch token counts differ."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        question = " ".join(WORDS[j] for j in torch.randint(len(WORDS), (3,), generator=generator).tolist())
        answer = " ".join(
            WORDS[j] for j in torch.randint(len(WORDS), (1 + (i * 5) % 12,), generator=generator).tolist()
        )
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def _prompt_completions(count=16):
    return [{"prompt": [message for message in row["messages"] if message["role"] == "user"],
             "completion": [message for message in row["messages"] if message["role"] == "assistant"]}
            for row in _conversations(count)]  # fmt: skip


def _config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, learning_rate=0.05, ivon_ess=1e6,
        ivon_hess_init=1e-3, ivon_clip_radius=float("inf"), weight_decay=1e-4, max_grad_norm=0.0,
        lr_scheduler_type="constant", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=7,
        max_length=64, logging_steps=1,
    )  # fmt: skip
    values.update(overrides)
    return IVONSFTConfig(**values)


def _trainer(tmp_path, tokenizer, rows, eval_rows=None, family="builtin:tiny-llama", **overrides):
    return IVONSFTTrainer(
        model=_model(tokenizer, family),
        args=_config(tmp_path, **overrides),
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=None if eval_rows is None else datasets.Dataset.from_list(eval_rows),
        processing_class=tokenizer,
    )


def _adapter(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _hessians(trainer):
    ivon = trainer.ivon_optimizer
    return [ivon.state[p]["hess"].clone() for p in ivon.param_groups[0]["params"]]


def test_gradient_accumulation_weighs_samples_by_their_loss_tokens(tmp_path, llama3, same_noise, monkeypatch):
    """4 micro-batches x 2 sequences == 1 x 8 on sequences of different lengths, means and Hessian alike."""
    rows = _conversations()
    full = _trainer(tmp_path / "full", llama3, rows, per_device_train_batch_size=8)
    full.train()
    accumulated = _trainer(tmp_path / "ga", llama3, rows, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    accumulated.train()
    # The micro-batches do hold different numbers of loss tokens (else the weighting would not matter).
    batch_tokens = [int((b["labels"][:, 1:] != -100).sum()) for b in accumulated.get_train_dataloader()]
    assert len(set(batch_tokens)) > 1
    start = _adapter(_trainer(tmp_path / "init", llama3, rows))
    full_params, accumulated_params = _adapter(full), _adapter(accumulated)
    for name, value in full_params.items():
        assert "lora_B" not in name or not torch.equal(value, start[name]), f"{name} did not move"
        torch.testing.assert_close(accumulated_params[name], value, rtol=1e-4, atol=1e-5 * value.abs().max(), msg=name)
    for h_acc, h_full in zip(_hessians(accumulated), _hessians(full)):
        torch.testing.assert_close(h_acc, h_full, rtol=1e-4, atol=0)
    # The same run averaging the micro-batches' own token means (the bug this fixes) lands elsewhere.
    monkeypatch.setattr(IVONSFTTrainer, "_loss_is_normalised_by_batch_items", lambda self, n: False)
    unweighted = _trainer(tmp_path / "unweighted", llama3, rows, per_device_train_batch_size=2,
                          gradient_accumulation_steps=4)  # fmt: skip
    unweighted.train()
    moved = [name for name, value in _adapter(unweighted).items() if "lora_B" in name]
    assert not all(torch.allclose(_adapter(unweighted)[n], full_params[n], rtol=1e-3, atol=0) for n in moved)


def test_a_plain_sft_config_is_refused(tmp_path, llama3):
    with pytest.raises(TypeError, match="IVONSFTConfig|IVONTrainingArguments"):
        IVONSFTTrainer(model=_model(llama3), args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                       train_dataset=datasets.Dataset.from_list(_conversations(4)), processing_class=llama3)  # fmt: skip


def test_config_keeps_ivon_defaults_and_sft_fields(tmp_path):
    config = IVONSFTConfig(output_dir=str(tmp_path), use_cpu=True, max_length=128, packing=True)
    assert (config.optim, config.learning_rate, config.ivon_beta2) == ("ivon", 0.03, 0.99999)
    assert (config.max_length, config.packing, config.dataset_text_field) == (128, True, "text")
    baseline = IVONSFTConfig(output_dir=str(tmp_path), use_cpu=True, optim="adamw_torch", learning_rate=2e-4)
    assert not baseline.use_ivon


@pytest.mark.parametrize("family, tokenizer_name, data", [
    ("builtin:tiny-llama", "llama3", "messages"),
    ("builtin:tiny-qwen2", "qwen25", "prompt-completion"),
])  # fmt: skip
def test_trains_and_reports_the_sampled_predictive_loss(tmp_path, request, family, tokenizer_name, data):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rows = _conversations(12) if data == "messages" else _prompt_completions(12)
    trainer = _trainer(tmp_path, tokenizer, rows, eval_rows=rows[:6], family=family, max_steps=3,
                       per_device_train_batch_size=4, per_device_eval_batch_size=4, ivon_eval_samples=3,
                       learning_rate=0.2)  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    # Re-implementation: each sample's summed target log-likelihood per sequence, by hand, then log-mean-exp.
    model = trainer.model
    sampler = Posterior.from_optimizer(trainer.ivon_optimizer, model).sampler(
        model, generator=torch.Generator().manual_seed(trainer.args.seed)
    )
    batches = list(trainer.get_eval_dataloader())
    per_sample = []
    model.eval()
    for _ in range(3):
        with sampler.sample(), torch.no_grad():
            lls = []
            for batch in batches:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                for row in range(len(batch["input_ids"])):
                    ll = 0.0
                    for t in range(1, batch["labels"].shape[1]):
                        if batch["labels"][row, t] != -100:
                            ll += torch.log_softmax(logits[row, t - 1].double(), -1)[batch["labels"][row, t]].item()
                    lls.append(ll)
            per_sample.append(lls)
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    bma = [math.log(sum(math.exp(per_sample[s][d]) for s in range(3)) / 3) for d in range(len(per_sample[0]))]
    assert metrics["eval_sampled_loss"] == pytest.approx(-sum(bma) / tokens, rel=1e-5)
    assert metrics["eval_sampled_perplexity"] == pytest.approx(math.exp(-sum(bma) / tokens), rel=1e-5)
    expected = sum(-sum(lls) / tokens for lls in per_sample) / 3
    assert metrics["eval_sampled_expected_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_sampled_loss"] <= metrics["eval_sampled_expected_loss"] + 1e-12  # Jensen
    # TRL's labels: a prompt-completion row scores its completion only, a conversation every token (no
    # assistant_only_loss here).
    scored_everything = all((b["labels"] != -100).sum() == b["attention_mask"].sum() for b in batches)
    assert scored_everything == (data == "messages")
    assert metrics["eval_sampled_tokens"] == tokens


def test_mean_log_likelihood_equals_trls_eval_loss(tmp_path, llama3):
    rows = _conversations(8)
    trainer = _trainer(tmp_path, llama3, rows, eval_rows=rows, max_steps=1, per_device_eval_batch_size=3)
    trainer.train()
    trainer.model.eval()
    sums, counts = zip(*(sequence_log_likelihoods(trainer.model, b) for b in trainer.get_eval_dataloader()))
    mean = predictive_loss_metrics(torch.cat(sums).unsqueeze(0), torch.cat(counts))
    # The Trainer's eval_loss is the mean over rows of their batch's token mean; recombine ours the same way.
    row_weighted = sum(-s.sum() / c.sum() * len(s) for s, c in zip(sums, counts)) / sum(len(s) for s in sums)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(float(row_weighted), rel=1e-5)
    assert mean["samples"] == 1 and mean["loss"] == pytest.approx(mean["expected_loss"])


def test_packed_rows_score_each_document_as_unpacked(tmp_path, llama3):
    """A padding-free packed batch (position_ids restart per document) gives each document's own log-likelihood."""
    rows = _conversations(6)
    unpacked = _trainer(tmp_path / "u", llama3, rows, eval_rows=rows, per_device_eval_batch_size=6, max_length=4096)
    packed = _trainer(tmp_path / "p", llama3, rows, eval_rows=rows, per_device_eval_batch_size=6, packing=True,
                      eval_packing=True, max_length=4096)  # fmt: skip
    model = unpacked.model.eval()
    (batch,) = list(unpacked.get_eval_dataloader())
    (packed_batch,) = list(packed.get_eval_dataloader())
    assert "attention_mask" not in packed_batch and packed_batch["input_ids"].shape[0] == 1
    sums, counts = sequence_log_likelihoods(model, batch)
    packed_sums, packed_counts = sequence_log_likelihoods(model, packed_batch)
    # bfd packing reorders documents: compare as multisets.
    assert sorted(counts.tolist()) == sorted(packed_counts.tolist())
    torch.testing.assert_close(torch.sort(packed_sums).values, torch.sort(sums).values, rtol=1e-4, atol=1e-4)


def test_packing_and_token_weighting_train(tmp_path, qwen25):
    """Packed training (bfd, padding-free) runs under IVON and counts tokens, not rows."""
    trainer = _trainer(tmp_path, qwen25, _prompt_completions(16), family="builtin:tiny-qwen2", packing=True,
                       max_length=48, per_device_train_batch_size=2, gradient_accumulation_steps=2)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(math.isfinite(h.sum().item()) for h in _hessians(trainer))


def test_default_ess_counts_the_target_tokens_packed_or_not(tmp_path, qwen25):
    """ivon_ess's default is the train set's number of target tokens (the token-level likelihood's terms)."""
    rows = _prompt_completions(16)
    plain = _trainer(
        tmp_path / "plain", qwen25, rows, family="builtin:tiny-qwen2", ivon_ess=None, max_steps=1, max_length=4096
    )
    targets = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in plain.get_train_dataloader())
    assert plain.likelihood_size() == targets
    packed = _trainer(tmp_path / "packed", qwen25, rows, family="builtin:tiny-qwen2", ivon_ess=None, packing=True,
                      max_length=4096)  # fmt: skip
    assert packed.likelihood_size() == targets
    plain.train()  # ess = max(targets, the floor that keeps the initial std at most 0.032)
    assert plain.ivon_optimizer.param_groups[0]["ess"] == max(targets, 1 / (0.032**2 * (1e-3 + 1e-4)))


def test_args_none_gives_a_default_ivon_sft_config(tmp_path, llama3, monkeypatch):
    """As TRL's SFTTrainer builds its SFTConfig; the mixin's IVONTrainingArguments would not convert to one."""
    monkeypatch.chdir(tmp_path)
    trainer = IVONSFTTrainer(model=_model(llama3), train_dataset=datasets.Dataset.from_list(_conversations(4)),
                             processing_class=llama3)  # fmt: skip
    assert type(trainer.args) is IVONSFTConfig
    assert (trainer.args.optim, trainer.args.learning_rate) == ("ivon", 0.03)


def test_an_adamw_sft_config_keeps_trls_learning_rate(tmp_path):
    assert IVONSFTConfig(output_dir=str(tmp_path), use_cpu=True, optim="adamw_torch").learning_rate == 2e-5


def test_a_dict_of_eval_sets_gets_each_its_own_sampled_loss_once(tmp_path, llama3):
    rows = _conversations(12)
    eval_sets = {"short": datasets.Dataset.from_list(rows[:4]), "long": datasets.Dataset.from_list(rows[4:10])}
    trainer = IVONSFTTrainer(model=_model(llama3), args=_config(tmp_path, max_steps=1, per_device_eval_batch_size=4,
                                                                ivon_eval_samples=2),
                             train_dataset=datasets.Dataset.from_list(rows), eval_dataset=eval_sets,
                             processing_class=llama3)  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    assert not any(key.startswith("eval_sampled") for key in metrics)
    for name, dataset in eval_sets.items():
        alone = trainer.evaluate(dataset, metric_key_prefix=f"eval_{name}")
        assert metrics[f"eval_{name}_sampled_tokens"] == alone[f"eval_{name}_sampled_tokens"]
        assert metrics[f"eval_{name}_sampled_loss"] == pytest.approx(alone[f"eval_{name}_sampled_loss"], rel=1e-6)
    assert metrics["eval_short_sampled_tokens"] != metrics["eval_long_sampled_tokens"]
    with pytest.raises(ValueError, match="2 named evaluation datasets \\(short, long\\)"):
        trainer.evaluation_batches()


def test_the_validation_loss_scores_every_document_when_training_ends_on_an_epochs_last_batch(tmp_path, llama3):
    """10 train rows at batch 4 stop at step 3 on the epoch's last (short) batch: accelerate's gather_for_metrics
    would still see that loader's remainder (2) and cut every evaluation batch to it."""
    rows = _conversations(12)
    trainer = _trainer(tmp_path, llama3, rows[:10], eval_rows=rows, max_steps=3, per_device_train_batch_size=4,
                       per_device_eval_batch_size=4, ivon_eval_samples=2)  # fmt: skip
    trainer.train()
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in trainer.get_eval_dataloader())
    metrics = trainer.evaluate()
    assert metrics["eval_sampled_documents"] == 12 and metrics["eval_sampled_tokens"] == tokens
    posterior = Posterior.from_optimizer(trainer.ivon_optimizer, trainer.model)
    final = predictive_losses(trainer.model, trainer.evaluation_batches(), posterior, 2,
                              **trainer.document_gathering())  # what `ivon-lora train` reports  # fmt: skip
    assert final["mean"]["documents"] == final["sampled"]["documents"] == 12 and final["mean"]["tokens"] == tokens


@pytest.mark.parametrize("max_grad_norm, equal", [(1e9, True), (1e-3, False)])
def test_accumulation_equals_one_big_batch_exactly_while_no_sample_is_clipped(max_grad_norm, equal, tmp_path, llama3,
                                                                               same_noise):  # fmt: skip
    """The Trainer guide's statement: 4 x 2 gives the update of 1 x 8 while max_grad_norm clips no sample's gradient
    (0 or above every per-sample norm); each micro-batch's sample is clipped alone, so a clipping step differs."""
    rows = _conversations()
    full = _trainer(tmp_path / "full", llama3, rows, per_device_train_batch_size=8, max_grad_norm=max_grad_norm)
    full.train()
    accumulated = _trainer(tmp_path / "ga", llama3, rows, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                           max_grad_norm=max_grad_norm)  # fmt: skip
    accumulated.train()
    same = all(torch.allclose(value, _adapter(full)[name], rtol=1e-4, atol=1e-5 * value.abs().max())
               for name, value in _adapter(accumulated).items())  # fmt: skip
    assert same == equal
