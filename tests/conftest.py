"""Shared fixtures: tiny built-in models, their tokenizers and synthetic examples. Nothing touches the Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from ivon_lora.modeling import BUILTIN_MODELS, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def llama_tokenizer():
    return build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])


@pytest.fixture(scope="session")
def qwen_tokenizer():
    return build_tokenizer(BUILTIN_MODELS["builtin:tiny-qwen2"])


@pytest.fixture(scope="session")
def synthetic_examples():
    from ivon_lora.tasks import load_examples

    return {split: load_examples("synthetic", split, limit=64) for split in ("train", "validation")}
