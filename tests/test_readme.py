"""The README and the docs' code: .ci/run runs the README's test command verbatim, every `from ivon_lora... import`
of a Python block names something that exists, and the README's IVONTrainer and TRL examples run."""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _quickstart_commands():
    quickstart = _read("README.md").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = quickstart.split("```bash\n")[1:]
    return [block.split("```", 1)[0].strip() for block in blocks]


def _python_blocks(path):
    return [block.split("```", 1)[0] for block in _read(path).split("```python\n")[1:]]


def test_quickstart_has_the_demo_and_the_test_command_and_ci_runs_the_latter():
    demo, tests = _quickstart_commands()
    assert demo.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 &&")
    assert demo.endswith("ivon-lora train recipes/smollm2/wordfacts_clean-ivon.yaml") and '-e ".[gguf]"' in demo
    assert os.path.isfile(os.path.join(ROOT, "recipes", "smollm2", "wordfacts_clean-ivon.yaml"))
    assert tests.endswith("pytest -q")
    assert tests in _read(os.path.join(".ci", "run")).splitlines()
    # The docs' getting-started page gives the same two commands.
    assert f"```bash\n{demo}\n```" in _read("docs/getting-started.md")
    assert f"```bash\n{tests}\n```" in _read("docs/getting-started.md")


def test_the_readme_stays_short():
    assert len(_read("README.md").splitlines()) <= 250


def test_the_python_imports_of_the_readme_and_the_docs_resolve():
    """Every `from ivon_lora... import ...` of the README's and the docs' Python blocks names something that exists."""
    import importlib
    import re

    pages = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                             recursive=True))]  # fmt: skip
    blocks = [block for page in pages for block in _python_blocks(page)]
    imports = [m for block in blocks for m in re.findall(r"^from (ivon_lora[\w.]*) import (.+)$", block, re.M)]
    assert len(imports) >= 8
    for module, names in imports:
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"


def _tiny_qwen(tmp_path):
    """A tiny random Qwen2 model dir with a Qwen tokenizer: the Hub ids of the examples, offline."""
    from family_tokenizers import qwen_tokenizer

    from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model

    tokenizer = qwen_tokenizer(thinking=False)
    model_dir = str(tmp_path / "qwen")
    build_tiny_model(BUILTIN_MODELS["builtin:tiny-qwen2"], tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def _run(example, replacements, name):
    import torch

    for old, new in replacements.items():
        assert old in example, old
        example = example.replace(old, new)
    torch.manual_seed(0)
    exec(compile(example, name, "exec"), {})


def test_the_readmes_ivon_trainer_example_runs(tmp_path, monkeypatch):
    """The IVONTrainer example (README and Trainer guide alike), verbatim but for the Hub ids (a tiny local model and
    dataset) and its size."""
    import datasets

    (example,) = [b for b in _python_blocks("README.md") if "IVONTrainer(model=" in b]
    assert example in _python_blocks("docs/guides/trainer.md")
    assert len(example.strip().splitlines()) <= 14
    model_dir = _tiny_qwen(tmp_path)
    rows = [{"quote": f"A quote about {word}.", "author": "someone", "tags": [word]} for word in ("yes", "no", "maybe")]
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    replacements = {'"Qwen/Qwen2.5-0.5B"': repr(model_dir), "max_steps=10_000": "max_steps=2",
                    "bf16=True": "use_cpu=True, report_to='none', per_device_train_batch_size=2",
                    'output_dir="qwen-ivon"': f"output_dir={str(tmp_path / 'out')!r}"}  # fmt: skip
    _run(example, replacements, "README.md (IVONTrainer example)")
    saved = set(os.listdir(tmp_path / "out"))
    assert {"adapter_model.safetensors", "posterior.safetensors", "posterior_config.json"} <= saved


def test_the_readmes_trl_example_runs_and_is_the_sft_guides(tmp_path, monkeypatch):
    """The TRL example (README and SFT guide alike), verbatim but for the Hub ids (a tiny local model and dataset)
    and its size."""
    import datasets

    (example,) = [b for b in _python_blocks("README.md") if "IVONSFTTrainer(model=" in b]
    assert example in _python_blocks("docs/guides/sft.md")
    assert len(example.strip().splitlines()) <= 12
    model_dir = _tiny_qwen(tmp_path)
    rows = [{"messages": [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]}
            for word in ("yes", "no", "maybe", "later")]  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    replacements = {'"Qwen/Qwen2.5-0.5B-Instruct"': repr(model_dir), "max_steps=2000": "max_steps=2",
                    "bf16=True": "use_cpu=True, report_to='none'",
                    'output_dir="Qwen2.5-0.5B-IVON-SFT"': f"output_dir={str(tmp_path / 'out')!r}"}  # fmt: skip
    _run(example, replacements, "README.md (TRL example)")
    assert {"adapter_model.safetensors", "posterior.safetensors"} <= set(os.listdir(tmp_path / "out"))
