"""The README's Quickstart and CI stay in step: .ci/run runs the README's test command verbatim."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = quickstart.split("```bash\n")[1:]
    return [block.split("```", 1)[0].strip() for block in blocks]


def test_quickstart_has_the_demo_and_the_test_command_and_ci_runs_the_latter():
    demo, tests = _quickstart_commands()
    assert demo.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 &&")
    assert demo.endswith("ivon-lora train recipes/smollm2/wordfacts_clean-ivon.yaml") and '-e ".[gguf]"' in demo
    assert os.path.isfile(os.path.join(ROOT, "recipes", "smollm2", "wordfacts_clean-ivon.yaml"))
    assert tests.endswith("pytest -q")
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert tests in f.read().splitlines()


def test_the_readmes_python_imports_resolve():
    """Every `from ivon_lora... import ...` of the README's Python snippets names something that exists."""
    import importlib
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = [block.split("```", 1)[0] for block in f.read().split("```python\n")[1:]]
    imports = [m for block in blocks for m in re.findall(r"^from (ivon_lora[\w.]*) import (.+)$", block, re.M)]
    assert len(imports) >= 4
    for module, names in imports:
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"


def test_the_readmes_trl_example_runs(tmp_path, monkeypatch):
    """The SFT section's TRL example, verbatim but for the Hub ids (a tiny local model and dataset) and its size."""
    import datasets
    import torch
    from family_tokenizers import qwen_tokenizer

    from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model

    with open(os.path.join(ROOT, "README.md")) as f:
        (example,) = [b.split("```", 1)[0] for b in f.read().split("```python\n")[1:] if "IVONSFTTrainer(model=" in b]
    assert len(example.strip().splitlines()) <= 12
    tokenizer = qwen_tokenizer(thinking=False)
    model_dir = str(tmp_path / "qwen")
    build_tiny_model(BUILTIN_MODELS["builtin:tiny-qwen2"], tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"messages": [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]}
            for word in ("yes", "no", "maybe", "later")]  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    replacements = {'"Qwen/Qwen2.5-0.5B-Instruct"': repr(model_dir), "max_steps=2000": "max_steps=2",
                    "bf16=True": "use_cpu=True, report_to='none'",
                    'output_dir="Qwen2.5-0.5B-IVON-SFT"': f"output_dir={str(tmp_path / 'out')!r}"}  # fmt: skip
    for old, new in replacements.items():
        assert old in example, old
        example = example.replace(old, new)
    torch.manual_seed(0)
    exec(compile(example, "README.md (TRL example)", "exec"), {})
    assert {"adapter_model.safetensors", "posterior.safetensors"} <= set(os.listdir(tmp_path / "out"))
