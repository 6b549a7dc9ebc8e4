"""Base models and tokenizers: QLoRA bases (bitsandbytes 4-bit and 8-bit, on CPU) and the Llama/Qwen conventions."""

import importlib.util

import pytest
import torch
from family_tokenizers import FAMILIES
from peft import PeftModel

from ivon_lora import modeling
from ivon_lora.builtin import BUILTIN_MODELS, BuiltinModel, build_tiny_model, build_tokenizer
from ivon_lora.modeling import apply_lora, load_base_model, load_tokenizer
from ivon_lora.choice import (
    ChoiceCollator,
    ChoiceExample,
    ChoiceTrainer,
    choice_logits,
    format_examples,
)
from ivon_lora.posterior import Posterior
from ivon_lora.config import ModelArguments, RecipeError
from ivon_lora.trainer import IVONTrainingArguments

# QLoRA needs the optional bitsandbytes (the `quant` extra); the tokenizer tests below do not.
needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed (pip install -e '.[quant]')"
)

QUANTIZED_LINEAR = {4: "Linear4bit", 8: "Linear8bitLt"}


def _rows(examples):
    return [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory):
    """A tiny Llama and a tiny Qwen2 saved as local model dirs (with their tokenizers): the `from_pretrained` path."""

    def save(name):
        directory = tmp_path_factory.mktemp(name.split(":")[1])
        tokenizer = build_tokenizer(BUILTIN_MODELS[name])
        build_tiny_model(BUILTIN_MODELS[name], tokenizer, seed=3).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return str(directory)

    return {"llama": save("builtin:tiny-llama"), "qwen2": save("builtin:tiny-qwen2")}


def _train(model, tokenizer, examples, output_dir, **overrides):
    import datasets

    args = IVONTrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=4, learning_rate=0.05,
        ivon_ess=1e9, ivon_hess_init=1e-5, ivon_clip_radius=0.01, weight_decay=0.0, use_cpu=True,
        report_to="none", save_strategy="no", logging_strategy="no", remove_unused_columns=False,
        disable_tqdm=True, seed=0, **overrides,
    )  # fmt: skip
    trainer = ChoiceTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(_rows(examples)),
        data_collator=ChoiceCollator(tokenizer), processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@needs_bitsandbytes
@pytest.mark.parametrize("bits, arch, checkpointing", [(4, "llama", False), (4, "qwen2", True), (8, "llama", False)])
def test_ivon_trains_lora_over_a_quantized_base_on_cpu(
    bits, arch, checkpointing, saved_base, synthetic_examples, tmp_path
):
    model_args = ModelArguments(saved_base[arch], quantization_bit=bits, dtype="float32")
    tokenizer = load_tokenizer(model_args)
    base = load_base_model(model_args, tokenizer)
    layer = base.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == QUANTIZED_LINEAR[bits]
    if bits == 4:
        import bitsandbytes as bnb

        assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
        assert all(not m.support_avx512bf16_for_cpu for m in base.modules() if isinstance(m, bnb.nn.Linear4bit))
    model = apply_lora(base, model_args)
    before = _trainable(model)
    assert before and all(p.dtype == torch.float32 for p in before.values())

    # The Trainer enables activation checkpointing from its own key (PEFT's switch stays off in the library).
    _train(model, tokenizer, synthetic_examples["train"][:8], tmp_path, activation_checkpointing=checkpointing)
    after = _trainable(model)
    assert all(not torch.equal(before[n], after[n]) for n in before), "every adapter tensor must have moved"
    posterior = Posterior.load(str(tmp_path))
    assert posterior.config["step"] == 2 and set(posterior.mean) == set(posterior.variance)

    # An eval-mode no-grad forward (evaluation during training) must not cut the gradients of the next step: the
    # avx512_bf16 repacking trap of bitsandbytes' CPU 4-bit path (docs/guides/qlora.md: quantized bases on CPU).
    batch = ChoiceCollator(tokenizer)(_rows(synthetic_examples["validation"][:4]))
    model.eval()
    with torch.no_grad():
        choice_logits(model, batch)
    model.train()
    model.zero_grad()
    torch.nn.functional.cross_entropy(choice_logits(model, batch), batch["labels"]).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), "LoRA gradients vanished"

    if bits == 4 and not checkpointing:
        # Evaluation reloads the base: quantizing again must give the same model, so the same scores.
        model.eval()
        reloaded = PeftModel.from_pretrained(load_base_model(model_args, tokenizer), str(tmp_path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(choice_logits(reloaded, batch), choice_logits(model, batch))


@needs_bitsandbytes
def test_a_builtin_model_is_quantized_through_the_from_pretrained_path(llama_tokenizer):
    import bitsandbytes as bnb

    model_args = ModelArguments("builtin:tiny-llama", quantization_bit=4)
    model = load_base_model(model_args, llama_tokenizer, seed=5)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert model.name_or_path == "" and model.config.name_or_path == ""  # not the deleted temporary dir
    # Same seed, same weights: the 4-bit base dequantizes to the full-precision built-in model's weights.
    full = build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], llama_tokenizer, seed=5)
    layer = model.model.layers[1].self_attn.v_proj
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    reference = full.model.layers[1].self_attn.v_proj.weight
    assert (dequantized - reference).abs().max() < 0.2 * reference.abs().max()
    again = load_base_model(model_args, llama_tokenizer, seed=5).model.layers[1].self_attn.v_proj.weight
    assert torch.equal(again.data, layer.weight.data)


@needs_bitsandbytes
def test_a_bf16_quantized_base_keeps_an_fp32_adapter(llama_tokenizer):
    """IVON refuses half-precision parameters: the adapter over a bf16-compute 4-bit base must stay fp32."""
    model_args = ModelArguments("builtin:tiny-llama", quantization_bit=4, dtype="bfloat16")
    base = load_base_model(model_args, llama_tokenizer)
    assert base.model.layers[0].self_attn.q_proj.compute_dtype == torch.bfloat16
    model = apply_lora(base, model_args)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    # prepare_model_for_kbit_training: frozen base, norms and head upcast to fp32.
    assert model.base_model.model.lm_head.weight.dtype == torch.float32
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize(
    "version, devices, message",
    [
        (None, None, (r"Recipe key 'quantization_bit': 4-bit bases need bitsandbytes>=\S+, which is not installed: "
                      r"pip install 'ivon-lora\[quant\]'")),
        ("0.40.0", None, r"Recipe key 'quantization_bit': 4-bit bases need bitsandbytes>=\S+, which is 0.40.0"),
        ("0.50.2", {"xpu"}, (r"Recipe key 'quantization_bit': bitsandbytes 0.50.2 supports the devices \['xpu'\], "
                             r"none of which is available here")),
    ],
)  # fmt: skip
def test_an_unusable_bitsandbytes_is_a_recipe_error_before_any_model_loads(
    version, devices, message, monkeypatch, llama_tokenizer, saved_base
):
    monkeypatch.setattr(modeling, "_bitsandbytes_version", lambda: version)
    if devices is not None:
        bnb = pytest.importorskip("bitsandbytes")
        monkeypatch.setattr(bnb, "supported_torch_devices", devices)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(modeling, "build_tiny_model", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)
    for name in ("builtin:tiny-llama", saved_base["llama"]):
        with pytest.raises(RecipeError, match=message):
            load_base_model(ModelArguments(name, quantization_bit=4), llama_tokenizer)
    modeling.check_quantization_support(ModelArguments(saved_base["llama"]))  # no quantization: nothing to check


# --------------------------------------------------------------------------- tokenizer conventions per family

ANSWER_SETS = [(" A", " B", " C", " D", " E"), (" False", " True"), (" 1", " 2")]
# How each family's tokenizer writes the answers after "Answer:" (plain) and after the chat template's
# assistant header (chat): byte-level "Ġ", sentencepiece "▁", and digits without their space everywhere.
EXPECTED_TOKENS = {
    ("llama2", "plain"): (["▁A", "▁B", "▁C", "▁D", "▁E"], ["▁False", "▁True"], ["1", "2"]),
    ("llama2", "chat"): (["▁A", "▁B", "▁C", "▁D", "▁E"], ["▁False", "▁True"], ["1", "2"]),  # after "[/INST]"
    ("llama3", "plain"): (["ĠA", "ĠB", "ĠC", "ĠD", "ĠE"], ["ĠFalse", "ĠTrue"], ["1", "2"]),
    ("llama3", "chat"): (["A", "B", "C", "D", "E"], ["False", "True"], ["1", "2"]),  # after "<|end_header_id|>\n\n"
    ("qwen2.5", "plain"): (["ĠA", "ĠB", "ĠC", "ĠD", "ĠE"], ["ĠFalse", "ĠTrue"], ["1", "2"]),
    ("qwen2.5", "chat"): (["A", "B", "C", "D", "E"], ["False", "True"], ["1", "2"]),  # after "assistant\n"
    ("qwen3", "plain"): (["ĠA", "ĠB", "ĠC", "ĠD", "ĠE"], ["ĠFalse", "ĠTrue"], ["1", "2"]),
    ("qwen3", "chat"): (["A", "B", "C", "D", "E"], ["False", "True"], ["1", "2"]),  # after "</think>\n\n"
}
PAD_TOKEN = {"llama2": "</s>", "llama3": "<|eot_id|>", "qwen2.5": "<|endoftext|>", "qwen3": "<|endoftext|>"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family's stand-in tokenizer saved to a dir, as a Hub snapshot would hold it."""
    dirs = {}
    for family, build in FAMILIES.items():
        dirs[family] = str(tmp_path_factory.mktemp(family))
        build().save_pretrained(dirs[family])
    return dirs


def _model_args(directory, family, prompt_format="plain"):
    kwargs = {"enable_thinking": False} if family == "qwen3" and prompt_format == "chat" else None
    return ModelArguments(directory, prompt_format=prompt_format, chat_template_kwargs=kwargs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_load_tokenizer_pads_left_and_has_a_pad_token(family, family_dirs):
    tokenizer = load_tokenizer(_model_args(family_dirs[family], family))
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == PAD_TOKEN[family]  # the family's own pad token, else EOS (never a new token)
    assert len(tokenizer) == len(FAMILIES[family]())
    starts_with_bos = tokenizer("Answer:")["input_ids"][0] == tokenizer.bos_token_id
    assert starts_with_bos == family.startswith("llama") and (tokenizer.bos_token is None) == family.startswith("qwen")


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_answers_resolve_per_family_and_prompt_format(family, prompt_format, family_dirs):
    model_args = _model_args(family_dirs[family], family, prompt_format)
    tokenizer = load_tokenizer(model_args)
    prompt = "Select one of the choices that answers the following question: Why? Choices: A. x B. y Answer:"
    examples = [ChoiceExample(str(i), prompt, answers, 0) for i, answers in enumerate(ANSWER_SETS)]
    collator = ChoiceCollator(tokenizer)
    batch = collator(_rows(format_examples(examples, tokenizer, model_args)))
    for row, expected in enumerate(EXPECTED_TOKENS[family, prompt_format]):
        ids = batch["choice_token_ids"][row][: len(expected)].tolist()
        assert tokenizer.convert_ids_to_tokens(ids) == expected
    # Exactly one BOS where the family has one, chat template or not (the template's own BOS is not doubled).
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = ids[mask.bool()].tolist()
        assert ids.count(tokenizer.bos_token_id) == (1 if family.startswith("llama") else 0)
        assert family.startswith("qwen") or ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_batch_scores_equal_single_prompt_scores(family, prompt_format, family_dirs, synthetic_examples):
    model_args = _model_args(family_dirs[family], family, prompt_format)
    tokenizer = load_tokenizer(model_args)
    spec = BuiltinModel("qwen2" if family.startswith("qwen") else "llama", bos=family.startswith("llama"))
    model = build_tiny_model(spec, tokenizer, seed=1).eval()
    examples = list(synthetic_examples["validation"][:4])
    examples[0] = ChoiceExample("long", "Why? " + examples[0].prompt * 2, examples[0].answers, 0)  # forces padding
    boolq_like = "Answer the question with only True or False: Sky blue?"
    examples.append(ChoiceExample("tf", boolq_like, (" False", " True"), 1))
    rows = _rows(format_examples(examples, tokenizer, model_args))
    collator = ChoiceCollator(tokenizer)
    batch = collator(rows)
    assert not batch["attention_mask"][1:, 0].any(), "the shorter prompts are left padded"
    with torch.no_grad():
        batched = choice_logits(model, batch)
        for row, logits in zip(rows, batched):
            single = choice_logits(model, collator([row]))[0]
            torch.testing.assert_close(logits[: len(single)], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16", "float16"])
def test_builtin_models_take_the_recipes_dtype_and_keep_fp32_adapters(dtype, llama_tokenizer):
    from ivon_lora.config import ModelArguments
    from ivon_lora.modeling import apply_lora, load_base_model

    model_args = ModelArguments("builtin:tiny-llama", dtype=dtype)
    base = load_base_model(model_args, llama_tokenizer)
    expected = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
    assert {p.dtype for p in base.parameters()} == {expected}
    adapted = apply_lora(base, model_args)
    assert {p.dtype for p in adapted.parameters() if p.requires_grad} == {torch.float32}
