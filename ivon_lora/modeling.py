"""Base model and tokenizer loading, LoRA wrapping, and the built-in tiny models of the offline demo."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


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


BUILTIN_MODELS = {
    "builtin:tiny-llama": BuiltinModel("llama", bos=True),
    "builtin:tiny-qwen2": BuiltinModel("qwen2", bos=False),
}


def build_tokenizer(spec: BuiltinModel):
    """A byte-level BPE tokenizer trained on the synthetic task's vocabulary; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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


def load_tokenizer(model_args):
    """The tokenizer, set up for left padding; a missing pad token reuses EOS (padded positions are masked)."""
    if model_args.model_name_or_path in BUILTIN_MODELS:
        return build_tokenizer(BUILTIN_MODELS[model_args.model_name_or_path])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_args, tokenizer, seed: int = 0):
    """The base causal LM: built in (random weights fixed by `seed`) or `from_pretrained`."""
    name = model_args.model_name_or_path
    if name in BUILTIN_MODELS:
        # Left unnamed: PEFT would look a named base up on the Hub at every save. The run's recipe names it.
        return build_tiny_model(BUILTIN_MODELS[name], tokenizer, seed=seed)
    if name.startswith(BUILTIN_PREFIX):
        raise ValueError(f"Unknown built-in model {name!r}; available: {', '.join(BUILTIN_MODELS)}")
    from transformers import AutoModelForCausalLM

    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=model_args.trust_remote_code)


def apply_lora(model, model_args):
    """Wrap `model` with a LoRA adapter; adapter weights are float32 whatever the base dtype (IVON needs it)."""
    from peft import LoraConfig, get_peft_model

    targets = model_args.lora_target
    config = LoraConfig(
        r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=True)
