"""Shared fixtures: tiny built-in models, their tokenizers and synthetic examples. Nothing touches the Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from ivon_lora.builtin import BUILTIN_MODELS, build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
# Fixtures that train a model end to end (or launch processes that do): a test using one, directly or through
# another fixture, is marked `slow`, so `pytest -m "not slow"` is the fast subset (see docs/contributing.md).
TRAINING_FIXTURES = {"run_dir", "adamw_run_dir", "sft_run", "sft_runs", "launch"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A short IVON run of the demo recipe (q/v LoRA r=4), trained once for every test that loads a run."""
    from ivon_lora import cli

    out = tmp_path_factory.mktemp("runs") / "ivon"
    args = ["train", DEMO, f"output_dir={out}", "max_steps=30", "max_train_samples=256", "max_eval_samples=32",
            "final_eval_samples=2", "disable_tqdm=true", "lora_target=[q_proj, v_proj]", "lora_rank=4"]  # fmt: skip
    assert cli.main(args) == 0
    return str(out)


@pytest.fixture
def same_noise(monkeypatch):
    """Every IVON posterior sample gets the same noise, so runs with different sample counts can be compared
    (gradient accumulation 4 x 2 against 1 x 8)."""
    import torch

    from ivon_lora.optim import IVON

    def sample_noise(self, params, noise, std):
        noise.normal_(0.0, std, generator=torch.Generator().manual_seed(123))

    monkeypatch.setattr(IVON, "_sample_noise", sample_noise)


@pytest.fixture(scope="session")
def adamw_run_dir(tmp_path_factory):
    """A short AdamW run of the demo recipe with LoRA dropout 0.1 (MC dropout), the IVON run's baseline."""
    from ivon_lora import cli

    out = tmp_path_factory.mktemp("runs") / "adamw"
    args = ["train", DEMO, f"output_dir={out}", "optim=adamw_torch", "learning_rate=0.003", "max_steps=20",
            "max_train_samples=256", "max_eval_samples=16", "disable_tqdm=true", "lora_target=[q_proj, v_proj]",
            "lora_rank=4", "lora_dropout=0.1"]  # fmt: skip
    assert cli.main(args) == 0
    return str(out)


@pytest.fixture(scope="module")
def run(run_dir):
    """`run_dir` loaded, once per test module (tests may change its adapter in place)."""
    from ivon_lora import load_run

    return load_run(run_dir)


@pytest.fixture(scope="module")
def wide(run):
    """The run's mean with a variance wide enough that samples change answers (the trained one barely does)."""
    import torch

    from ivon_lora.posterior import Posterior

    return Posterior(run.posterior.mean, {key: torch.full_like(v, 0.02) for key, v in run.posterior.variance.items()})
