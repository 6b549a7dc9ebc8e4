"""The built-in demo models (ivon_lora.builtin): tokenizers that encode any text and round-trip it, BOS as each
architecture's real family does, the chat template with generation marks, and tiny models whose weights the seed
fixes without moving the global RNG."""

import pytest
import torch

from ivon_lora.builtin import BUILTIN_CHAT_TEMPLATE, BUILTIN_MODELS, build_tiny_model


@pytest.fixture(params=["builtin:tiny-llama", "builtin:tiny-qwen2"])
def built(request, llama_tokenizer, qwen_tokenizer):
    tokenizer = llama_tokenizer if request.param == "builtin:tiny-llama" else qwen_tokenizer
    return BUILTIN_MODELS[request.param], tokenizer


def test_the_registry_holds_a_llama_with_bos_and_a_qwen2_without():
    assert {name: (spec.architecture, spec.bos) for name, spec in BUILTIN_MODELS.items()} == {
        "builtin:tiny-llama": ("llama", True), "builtin:tiny-qwen2": ("qwen2", False)}  # fmt: skip


def test_the_tokenizer_round_trips_any_text_and_marks_bos_as_its_family(built):
    spec, tokenizer = built
    text = "Select one of the choices: naïve café — 42 ✓"
    ids = tokenizer(text)["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) == spec.bos and (tokenizer.bos_token is not None) == spec.bos
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) <= spec.vocab_size and tokenizer.padding_side == "left"
    assert {tokenizer.eos_token, tokenizer.pad_token} == {"<|eos|>", "<|pad|>"}


def test_the_chat_template_renders_turns_and_marks_the_assistants(built):
    _, tokenizer = built
    messages = [{"role": "user", "content": "What is a mango?"}, {"role": "assistant", "content": "fruit"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "What is a mango?" in rendered and "fruit" in rendered
    assert rendered.index("What is a mango?") < rendered.index("fruit")
    assert "{% generation %}" in BUILTIN_CHAT_TEMPLATE  # TRL's assistant_only_loss needs the marks
    result = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    mask = result["assistant_masks"]
    assert 0 < sum(mask) < len(mask)
    assert "fruit" in tokenizer.decode([i for i, m in zip(result["input_ids"], mask) if m])


def test_the_model_is_its_architecture_with_the_tokenizers_ids(built):
    spec, tokenizer = built
    model = build_tiny_model(spec, tokenizer)
    assert model.config.model_type == spec.architecture and model.config.num_hidden_layers == spec.num_layers
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a b", "c"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_the_seed_fixes_the_weights_and_leaves_the_global_rng_alone(llama_tokenizer):
    spec = BUILTIN_MODELS["builtin:tiny-llama"]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_tiny_model(spec, llama_tokenizer, seed=5).state_dict()
    assert torch.equal(torch.rand(3), expected_next)  # building did not draw from the global generator
    again = build_tiny_model(spec, llama_tokenizer, seed=5).state_dict()
    other = build_tiny_model(spec, llama_tokenizer, seed=6).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first if first[key].is_floating_point())
