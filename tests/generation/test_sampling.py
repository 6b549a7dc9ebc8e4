"""Fast posterior sampling: the cached sampler, stacked draws, and S samples in one batched forward pass."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ivon_lora.sample_lora import per_sample_lora
from ivon_lora.evaluation.batched import (
    predict_sampled_probs,
    sampled_choice_probs,
)
from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model
from ivon_lora.modeling import apply_lora
from ivon_lora.choice import ChoiceCollator, choice_logits
from ivon_lora.posterior import Posterior, adapter_parameters
from ivon_lora.config import ModelArguments


def _lora_model(tokenizer):
    args = ModelArguments(model_name_or_path="builtin:tiny-llama", lora_rank=4, lora_dropout=0.0,
                          lora_target=["q_proj", "v_proj", "down_proj"])  # fmt: skip
    model = apply_lora(build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], tokenizer), args)
    return model.eval()


def _posterior(model, seed=0):
    """Random means (B nonzero, unlike a fresh adapter) and variances wide enough to move the predictions."""
    generator = torch.Generator().manual_seed(seed)
    params = adapter_parameters(model)
    mean = {k: 0.2 * torch.randn(p.shape, generator=generator) for k, p in params.items()}
    variance = {k: 0.01 * torch.rand(p.shape, generator=generator) for k, p in params.items()}
    posterior = Posterior(mean, variance)
    posterior.apply_mean(model)
    return posterior


@pytest.fixture(scope="module")
def model(llama_tokenizer):
    return _lora_model(llama_tokenizer)


@pytest.fixture(scope="module")
def posterior(model):
    return _posterior(model)


@pytest.fixture(scope="module")
def batches(llama_tokenizer, synthetic_examples):
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in synthetic_examples["validation"][:10]]
    collator = ChoiceCollator(llama_tokenizer)
    return [collator(rows[:6]), collator(rows[6:])]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_a_sample_is_mean_plus_std_times_one_flat_draw_in_key_order(model, posterior):
    pairs = posterior.bind(model)
    noise = torch.randn(sum(p.numel() for _, p in pairs), generator=torch.Generator().manual_seed(5))
    sampler = posterior.sampler(model, seed=5)
    with sampler.sample():
        start = 0
        for key, p in pairs:
            z = noise[start : start + p.numel()].view(p.shape)
            start += p.numel()
            torch.testing.assert_close(p.detach(), posterior.mean[key] + posterior.variance[key].sqrt() * z)


def test_sampler_matches_posterior_sample_and_restores_the_weights(model, posterior):
    before = _state(model)
    sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        with sampler.sample():
            ours = {k: p.detach().clone() for k, p in posterior.bind(model)}
        with posterior.sample(model, generator=generator):
            assert all(torch.equal(p, ours[k]) for k, p in posterior.bind(model))
        _assert_same_state(model, before)
    with pytest.raises(RuntimeError, match="inside"), sampler.sample():
        raise RuntimeError("inside")
    _assert_same_state(model, before)
    with pytest.raises(ValueError, match="either a generator or a seed"):
        posterior.sampler(model, generator=generator, seed=0)


def test_draw_stacks_exactly_the_samples_that_sample_would_hold(model, posterior):
    stack = posterior.sampler(model, seed=2).draw(3)
    sampler = posterior.sampler(model, seed=2)
    assert len(stack) == 3 and len(stack[1:]) == 2
    for s in range(3):
        with sampler.sample():
            for key, p in posterior.bind(model):
                assert torch.equal(stack.values[key][s], p.detach()), (s, key)


def test_batched_samples_equal_sequential_samples_and_leave_the_model_untouched(model, posterior, batches):
    before = _state(model)
    batch = batches[0]
    stack = posterior.sampler(model, seed=3).draw(4)
    batched = sampled_choice_probs(model, batch, stack)
    sampler = posterior.sampler(model, seed=3)
    with torch.no_grad():
        sequential = []
        for _ in range(4):
            with sampler.sample():
                sequential.append(torch.softmax(choice_logits(model, batch).double(), dim=-1))
    sequential = torch.stack(sequential)
    assert batched.shape == sequential.shape == (4, 6, batch["choice_token_ids"].shape[1])
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)
    assert (sequential[0] - sequential[1]).abs().max() > 1e-3, "the samples must differ for the test to mean much"
    _assert_same_state(model, before)
    assert not any("forward" in m.__dict__ for m in model.modules()), "a patched forward was left behind"


def test_predict_sampled_probs_shares_the_samples_across_batches(model, posterior, batches):
    sampler = posterior.sampler(model, seed=4)
    chunked = predict_sampled_probs(model, batches, sampler, num_samples=3, samples_per_pass=2)
    sampler = posterior.sampler(model, seed=4)
    with torch.no_grad():
        sequential = []
        for _ in range(3):
            with sampler.sample():
                probs = [torch.softmax(choice_logits(model, b).double(), dim=-1) for b in batches]
            sequential.append(torch.cat(probs))
    assert chunked.shape == (3, 10, batches[0]["choice_token_ids"].shape[1])
    torch.testing.assert_close(chunked, torch.stack(sequential), rtol=0, atol=1e-5)


def test_unsupported_layers_are_refused_with_the_way_out(llama_tokenizer, model, posterior):
    base = build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], llama_tokenizer)
    dora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).eval()
    stack = _posterior(dora).sampler(dora, seed=0).draw(2)
    with (
        pytest.raises(NotImplementedError, match="DoraLinearVariant.*use sequential samples"),
        per_sample_lora(dora, stack),
    ):
        pass
    model.train()
    try:
        for module in model.modules():  # a dropout layer with p > 0 that is in training mode
            if hasattr(module, "lora_dropout"):
                module.lora_dropout["default"] = torch.nn.Dropout(0.1)
                break
        stack = posterior.sampler(model, seed=0).draw(2)
        with pytest.raises(ValueError, match="call model.eval"), per_sample_lora(model, stack):
            pass
    finally:
        module.lora_dropout["default"] = torch.nn.Identity()
        model.eval()


def test_batched_samples_of_a_text_batch_equal_sequential_samples(model, posterior, llama_tokenizer):
    """answer_scoring: text — S copies of B*K rows stacked in one pass keep each copy's K answers together."""
    rows = [
        {
            "prompt": "Question: which word is a fruit?\nAnswer:",
            "answers": [" apple", " hammer", " blue sky"],
            "gold": 0,
            "scoring": "text_norm",
        },
        {"prompt": "The cat sat on the ", "answers": ["mat.", "answer A"], "gold": 1, "scoring": "text_norm"},
    ]
    batch = ChoiceCollator(llama_tokenizer)(rows)
    stack = posterior.sampler(model, seed=4).draw(3)
    batched = sampled_choice_probs(model, batch, stack)
    sampler = posterior.sampler(model, seed=4)
    with torch.no_grad():
        sequential = []
        for _ in range(3):
            with sampler.sample():
                sequential.append(torch.softmax(choice_logits(model, batch).double(), dim=-1))
    torch.testing.assert_close(batched, torch.stack(sequential), rtol=0, atol=1e-5)
    assert batched.shape == (3, 2, 3) and (batched[:, 1, 2] == 0).all()
