"""The built-in models of the offline demo and tests: tiny randomly initialised causal LMs of real architectures
(Llama, Qwen2), each with a byte-level BPE tokenizer trained locally. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import Registry


# A minimal chat template for the built-in tokenizers (no special tokens, so their vocabulary and the tiny models built
# on it do not change). The assistant's turns are marked {% generation %}, so TRL's assistant_only_loss works.
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'Assistant: ' }}{% generation %}{{ message['content'] + eos_token }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['role'] | capitalize + ': ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    """A tiny randomly initialised model built from a config, with a tokenizer trained locally."""

    architecture: str  # "llama" or "qwen2"
    bos: bool  # whether the tokenizer prepends a BOS token (Llama does, Qwen does not)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 640


BUILTIN_MODELS: Registry[BuiltinModel] = Registry(
    "built-in model",
    {
        "builtin:tiny-llama": BuiltinModel("llama", bos=True),
        "builtin:tiny-qwen2": BuiltinModel("qwen2", bos=False),
    },
)


def build_tokenizer(spec: BuiltinModel):
    """A byte-level BPE tokenizer trained on the synthetic task's vocabulary; any text encodes."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from .tasks.synthetic import tokenizer_corpus

    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    if spec.bos:
        bos_id = tokenizer.token_to_id("<|bos|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|bos|>" if spec.bos else None,
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        padding_side="left",
        chat_template=BUILTIN_CHAT_TEMPLATE,
    )


def build_tiny_model(spec: BuiltinModel, tokenizer, seed: int = 0):
    """A randomly initialised causal LM of `spec`'s architecture; the seed fixes its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        spec.architecture,
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # The weights come from a private generator so building the model never moves the global RNG.
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model
