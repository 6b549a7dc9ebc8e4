"""Base model and tokenizer loading (Hub / local dir / built in; bf16, 4-bit or 8-bit), and LoRA wrapping.

bitsandbytes is imported only when a recipe asks for a quantized base (`quantization_bit`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager

import torch

from .builtin import BUILTIN_MODELS, build_tiny_model, build_tokenizer
from .errors import RecipeError, UsageError
from .config import check_local_model_dir

logger = logging.getLogger(__name__)


def load_tokenizer(model_args):
    """The tokenizer, set up for left padding (the last position is every prompt's end).

    A tokenizer without a pad token (Llama-2, Llama-3) pads with EOS: padded positions are masked by the attention
    mask and never scored, so the pad id's identity does not matter, and no token is added to the vocabulary.
    """
    if model_args.model_name_or_path in BUILTIN_MODELS:
        return build_tokenizer(BUILTIN_MODELS[model_args.model_name_or_path])
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    with _naming_the_model(model_args):
        tokenizer = AutoTokenizer.from_pretrained(
            model_path(model_args), trust_remote_code=model_args.trust_remote_code, **kwargs
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer of {model_args.model_name_or_path!r} has neither a pad nor an EOS token to pad with; "
                "set one in its tokenizer_config.json (pad_token)."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Quantized bases (QLoRA): bitsandbytes 4-bit NF4 or 8-bit LLM.int8, dispatched by the `quantization_bit` key.

_BITSANDBYTES_HINT = "pip install 'ivon-lora[quant]' (bitsandbytes>={version})"


def _bitsandbytes_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def check_quantization_support(model_args) -> None:
    """Raise a `RecipeError` naming `quantization_bit` if this machine cannot load a bitsandbytes base.

    Cheap (imports bitsandbytes, loads no model): call it before any output is written.
    """
    bits = model_args.quantization_bit
    if bits is None:
        return
    from packaging.version import Version
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    installed = _bitsandbytes_version()
    if installed is None or Version(installed) < Version(BITSANDBYTES_MIN_VERSION):
        found = "is not installed" if installed is None else f"is {installed}"
        raise RecipeError(
            f"Recipe key 'quantization_bit': {bits}-bit bases need bitsandbytes>={BITSANDBYTES_MIN_VERSION}, which "
            f"{found}: {_BITSANDBYTES_HINT.format(version=BITSANDBYTES_MIN_VERSION)}, or set quantization_bit: null."
        )
    import bitsandbytes
    from transformers.utils import get_available_devices

    # bitsandbytes >= 0.46 runs 4-bit and 8-bit on CPU too; this catches builds without a backend for any device.
    supported = set(getattr(bitsandbytes, "supported_torch_devices", ()))
    available = set(get_available_devices())
    if not supported & available:
        raise RecipeError(
            f"Recipe key 'quantization_bit': bitsandbytes {installed} supports the devices {sorted(supported)}, none "
            f"of which is available here ({sorted(available)}). Install a bitsandbytes build for this hardware, "
            "or set quantization_bit: null."
        )


def compute_dtype(model_args) -> torch.dtype:
    """The dtype of a quantized base's matmuls: the recipe's `dtype`; for auto, bf16 on a bf16 GPU, else fp32."""
    if model_args.dtype != "auto":
        return getattr(torch, model_args.dtype)
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def quantization_config(model_args):
    """The `BitsAndBytesConfig` of `quantization_bit` (4: QLoRA's NF4 with double quantization; 8: LLM.int8)."""
    bits = model_args.quantization_bit
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(model_args),
        )
    return BitsAndBytesConfig(load_in_8bit=True)


class _FirstOnly(logging.Filter):
    """Lets the first record of a message template through and drops its repeats."""

    def __init__(self, template: str):
        super().__init__()
        self.template, self.seen = template, False

    def filter(self, record):
        if record.msg != self.template:
            return True
        seen, self.seen = self.seen, True
        return not seen


def prepare_quantized_model(model):
    """Make a freshly loaded bitsandbytes model trainable under LoRA (frozen base, fp32 norms and head).

    Activation checkpointing is left to the Trainer: its `activation_checkpointing` key (alias
    `gradient_checkpointing`) enables it on the LoRA-wrapped model, non-reentrant and with input grads, so
    PEFT's own (reentrant, always-on by default) switch stays off here and the recipe decides.
    """
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On CPUs with avx512_bf16, a no-grad eval-mode forward repacks the 4-bit weight in place; training
            # afterwards silently loses the LoRA gradients (Llama) or fails on an in-place op on a leaf (Qwen2).
            # Evaluation during or before training is routine here, so the repacked fast path is switched off.
            module.support_avx512bf16_for_cpu = False
    # LLM.int8 logs this on every 8-bit matmul whose input is not fp16 (always, under fp32 or bf16): say it once.
    functions_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOnly) for f in functions_logger.filters):
        template = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"
        functions_logger.addFilter(_FirstOnly(template))
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


@contextmanager
def _naming_the_model(model_args):
    """A model id that neither is a local dir nor loads from the Hub (a typo, no network): one line naming the key."""
    try:
        yield
    except OSError as error:
        name = model_args.model_name_or_path
        if os.path.isdir(name):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(
            f"Recipe key 'model_name_or_path': {name!r} is not a local dir and did not load from the Hugging Face Hub "
            f"({reason}). Pass a local model dir or a built-in (builtin:tiny-llama); with a downloaded copy in the "
            "cache, set HF_HUB_OFFLINE=1 to skip the network."
        ) from None


def base_module_names(model_args, tokenizer) -> list[str] | None:
    """The module names of the base model, from its config alone (built on the meta device: no weights load);
    None for a GGUF base, whose config comes with its weights."""
    if model_args.gguf_file:
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    name = model_args.model_name_or_path
    with torch.device("meta"):
        if name in BUILTIN_MODELS:
            model = build_tiny_model(BUILTIN_MODELS[name], tokenizer)
        else:
            with _naming_the_model(model_args):
                config = AutoConfig.from_pretrained(
                    model_path(model_args), trust_remote_code=model_args.trust_remote_code
                )
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
    return [module_name for module_name, _ in model.named_modules()]


def check_lora_targets(model_args, tokenizer) -> None:
    """Every `lora_target` names a module of the base (PEFT's rule: the full name or its last components)."""
    targets = model_args.lora_target
    names = None if targets == ["all-linear"] else base_module_names(model_args, tokenizer)
    if names is None:
        return
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
        raise RecipeError(
            f"Recipe key 'lora_target': {', '.join(map(repr, unmatched))} match no module of "
            f"{model_args.model_name_or_path!r}; its modules are named {', '.join(leaves)} (or use all-linear)"
        )


def model_path(model_args) -> str:
    """What `from_pretrained` loads: the Hub id or local dir, or the cached dir of a packaged model."""
    from .packaged import PACKAGED_MODELS, ensure_packaged_model

    name = model_args.model_name_or_path
    if name in PACKAGED_MODELS:
        return ensure_packaged_model(name)
    if os.path.isdir(name) and not model_args.gguf_file:
        check_local_model_dir(name, need_weights=False)  # a tokenizer-only dir loads a tokenizer
    return name


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model) -> int | None:
    """The longest sequence the model's position encoding covers (its config's), or None if it names none."""
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(model, prompt_lengths: list[int], max_new_tokens: int) -> None:
    """Refuse a prompt that, with `max_new_tokens` generated after it, runs past the model's context: past it the
    positions are untrained and the answer is garbage, with no word from transformers."""
    limit = context_length(model)
    if limit is None:
        return
    for index, length in enumerate(prompt_lengths):
        if length + max_new_tokens > limit:
            fix = "shorten it" if length >= limit else f"shorten it, or lower max_new_tokens to {limit - length}"
            raise UsageError(
                f"Prompt {index + 1} is {length} tokens, which with max_new_tokens {max_new_tokens} is "
                f"longer than the model's context ({limit} tokens): {fix}"
            )


def _from_pretrained(path: str, model_args):
    from transformers import AutoModelForCausalLM

    if model_args.gguf_file:
        from .packaged import load_gguf_model

        dtype = None if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
        return load_gguf_model(path, model_args.gguf_file, dtype)

    quantization = quantization_config(model_args)
    if model_args.dtype != "auto":
        dtype = getattr(torch, model_args.dtype)
    else:
        dtype = compute_dtype(model_args) if quantization is not None else "auto"
    with _naming_the_model(model_args):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, quantization_config=quantization, trust_remote_code=model_args.trust_remote_code
        )
    return prepare_quantized_model(model) if quantization is not None else model


def load_base_model(model_args, tokenizer, seed: int = 0):
    """The base causal LM: built in (random weights fixed by `seed`) or `from_pretrained`; quantized if asked.

    A built-in model with `quantization_bit` is saved to a temporary dir and loaded back quantized: the path a
    Hub model takes, so the offline demo can train QLoRA too.
    """
    check_quantization_support(model_args)  # before anything loads
    name = model_args.model_name_or_path
    if name in BUILTIN_MODELS:
        model = build_tiny_model(BUILTIN_MODELS[name], tokenizer, seed=seed)
        if model_args.quantization_bit is None:
            # Left unnamed: PEFT would look a named base up on the Hub at every save. The run's recipe names it.
            # Built in float32; the recipe's dtype applies as it would to a Hub model's weights.
            return model if model_args.dtype in ("auto", "float32") else model.to(getattr(torch, model_args.dtype))
        # ignore_cleanup_errors: where open files cannot be deleted (Windows), memory-mapped weights keep theirs.
        with tempfile.TemporaryDirectory(prefix="ivon-lora-builtin-", ignore_cleanup_errors=True) as directory:
            model.save_pretrained(directory)
            model = _from_pretrained(directory, model_args)
        # Not named after the deleted temporary dir, for the same reason as above.
        model.name_or_path = model.config.name_or_path = ""
        return model
    return _from_pretrained(model_path(model_args), model_args)


def apply_lora(model, model_args):
    """Wrap `model` with a LoRA adapter; adapter weights are float32 whatever the base dtype (IVON needs it).

    `autocast_adapter_dtype` upcasts adapters created in fp16/bf16 (over a half-precision or quantized base) to fp32.
    """
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
