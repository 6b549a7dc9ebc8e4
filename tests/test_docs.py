"""The docs site: reference pages that list every flag and recipe key, study numbers tied to the committed results,
the README's results table rendered from its study, the constraints file pinning the results' versions, and the
docs build wired into CI.

The site itself is built by `mkdocs build --strict` in .ci/run (the `docs` extra); these tests need no mkdocs.
"""

import argparse
import dataclasses
import glob
import json
import os
import re
import statistics
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs"))

import reference_pages  # noqa: E402
import study_numbers  # noqa: E402


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _pages():
    pages = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    return ["README.md", *sorted(os.path.relpath(page, ROOT) for page in pages)]


def test_the_cli_reference_lists_every_flag_of_every_command():
    from ivon_lora.cli import build_parser
    from ivon_lora.commands import COMMANDS

    page = reference_pages.cli_page()
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subparsers.choices) == set(COMMANDS)
    for name, parser in subparsers.choices.items():
        section = page.split(f"## `ivon-lora {name}`\n", 1)[1].split("\n## ", 1)[0]
        flags = [flag for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")]
        for flag in flags:
            assert f"`{flag}`" in section, f"ivon-lora {name} {flag} is missing from the CLI reference"
    # The flags of eval come from EvalConfig's fields: one per field that has a flag.
    from ivon_lora.commands._options import flag_fields
    from ivon_lora.config import EvalConfig

    eval_section = page.split("## `ivon-lora eval`\n", 1)[1].split("\n## ", 1)[0]
    for field in flag_fields(EvalConfig):
        assert f"`{field.metadata.get('flag', '--' + field.name.replace('_', '-'))}`" in eval_section


def test_the_recipe_reference_lists_every_recipe_key():
    """Every key a recipe accepts beyond TrainingArguments' and SFTConfig's own, for both objectives."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    from ivon_lora.config import argument_classes
    from ivon_lora.config.parsing import _field_types

    page = reference_pages.recipe_page()
    inherited = {f.name for cls in (TrainingArguments, SFTConfig) for f in dataclasses.fields(cls)}
    ivon_fields = {"optim", "learning_rate"}  # TrainingArguments' fields that IVONTrainingArguments redefines
    keys = set(_field_types([*argument_classes("choice"), *argument_classes("sft")])) - (inherited - ivon_fields)
    assert {"model_name_or_path", "ivon_ess", "prior_from", "dataset", "optim", "learning_rate"} <= keys
    missing = sorted(key for key in keys if f"| `{key}` |" not in page)
    assert not missing, f"recipe keys missing from the recipe reference: {missing}"
    from ivon_lora.config import RENAMED_RECIPE_KEYS

    for old, new in RENAMED_RECIPE_KEYS.items():
        assert f"| `{old}` | `{new}` |" in page


def test_the_reference_pages_are_generated_into_the_site_and_in_its_nav():
    hooks = _read("docs/hooks.py")
    nav = _read("mkdocs.yml")
    for page in ("reference/cli.md", "reference/recipe.md"):
        assert f'"{page}"' in hooks and page in nav
        assert not os.path.exists(os.path.join(ROOT, "docs", page)), f"{page} is generated, not written"


# Pages that quote study numbers must say where from (`<!-- numbers: ... -->`): every study page, the README, the
# getting-started page, and any page naming a results file.
def _quotes_studies(page):
    text = _read(page)
    return page.startswith("docs/studies/") or page in ("README.md", "docs/getting-started.md") or "results/" in text


def _readme_comparison():
    return json.loads(_read(f"results/{study_numbers.README_COMPARISON}/compare.json"))


def _checked_text(page):
    """A page's text as the number check reads it: the README without its rendered results, which are checked as
    rendered from the comparison (`test_the_readmes_results_are_rendered_from_the_comparison`), cell by cell."""
    text = _read(page)
    if page == "README.md":
        for block in study_numbers.readme_blocks(_readme_comparison()):
            text = text.replace(block, "")
    return text


@pytest.mark.parametrize("page", [page for page in _pages() if _quotes_studies(page)])
def test_every_study_number_on_the_page_is_in_the_committed_results(page):
    text = _checked_text(page)
    sources, _ = study_numbers.declared(text)
    if not sources:  # a page may name results/ as a place; without declared sources it quotes no number
        assert not study_numbers.NUMBER.findall(study_numbers._prose(text)), f"{page} declares no numbers: sources"
        return
    unbacked = study_numbers.unbacked_numbers(text, os.path.dirname(os.path.join(ROOT, page)))
    assert not unbacked, f"{page}: numbers not in its declared results {sources}: {unbacked}"


def test_the_number_check_catches_a_changed_number():
    """A quoted number changed is caught (unless the change happens to give another number of the same results)."""
    page = _read("docs/studies/wordfacts-clean.md")
    assert study_numbers.unbacked_numbers(page) == []
    assert "(validation NLL 0.179 vs 0.366)" in page
    assert study_numbers.unbacked_numbers(page.replace("0.179 vs 0.366", "0.917 vs 0.366")) == ["0.917"]
    readme = _checked_text("README.md")
    assert study_numbers.unbacked_numbers(readme, ROOT) == []
    assert study_numbers.unbacked_numbers(readme.replace("0.044 NLL", "0.051 NLL"), ROOT) == ["0.051"]


def test_the_readmes_results_are_rendered_from_the_comparison():
    report = _readme_comparison()
    readme = _read("README.md")
    blocks = study_numbers.readme_blocks(report)
    for block in blocks:
        assert block in readme
    # A cell by hand: IVON's accuracy is the mean over the 5 reported seeds and its t-interval (t_0.975,4 = 2.776).
    values = [report["rows"][study_numbers.README_METHOD]["per_seed"][str(seed)]["accuracy"]
              for seed in report["seeds"]["reported"]]  # fmt: skip
    mean, half = statistics.mean(values), 2.7764451051977934 * statistics.stdev(values) / 5**0.5
    assert f"| {100 * mean:.1f} [{100 * (mean - half):.1f}, {100 * (mean + half):.1f}] |" in blocks[0]


def _same(a, b) -> bool:
    """Equal as recipe values: numbers by value (1.0 and "1"), anything else as written."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


@pytest.mark.parametrize("method", ["wordfacts_clean-ivon", "wordfacts_clean-adamw"])
def test_the_quickstart_recipes_are_the_comparisons_chosen_runs(method):
    """Each quickstart recipe is the comparison's chosen run of its method at a reported seed, but for what compare
    sets (the output dir, checkpoints, the split it evaluates during training): it trains that run."""
    report = _readme_comparison()
    recipe = yaml.safe_load(_read(f"recipes/smollm2/{method}.yaml"))
    assert recipe["seed"] in report["seeds"]["reported"] and recipe["dataset"] == report["task"]
    chosen = report["methods"][method]["candidates"][report["methods"][method]["chosen"]]["settings"]
    assert all(_same(recipe[key], value) for key, value in chosen.items())
    (run,) = [run for run in report["runs"].values()
              if run["method"] == method and run["seed"] == recipe["seed"] and run["stage"] == "reported"]  # fmt: skip
    set_by_compare = {"output_dir", "eval_split", "save_strategy", "save_steps", "overwrite_output_dir", "report_to"}
    for key, value in recipe.items():
        if key not in set_by_compare:
            assert _same(run["recipe"][key], value), key


def test_the_quickstart_prints_a_reported_seed_of_the_readmes_comparison():
    """So the 10-sample line the demo prints is its seed's row of the README's table."""
    report = _readme_comparison()
    seed = yaml.safe_load(_read("recipes/smollm2/wordfacts_clean-ivon.yaml"))["seed"]
    row = report["rows"][study_numbers.README_METHOD]["per_seed"][str(seed)]
    printed = (f"10 samples accuracy {100 * row['accuracy']:.1f} | nll {row['nll']:.3f} | ece_10 "
               f"{100 * row['ece_10']:.1f}")  # fmt: skip
    for page in ("README.md", "docs/getting-started.md"):
        assert printed in " ".join(_read(page).split()), page
    assert "AVX-512" in _read("docs/getting-started.md") and "AVX2" in _read("docs/getting-started.md")


def _pins():
    lines = [line.strip() for line in _read("constraints/results.txt").splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def _environments():
    """Each results JSON's recorded package versions, by file."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "environment" and isinstance(value, dict) and "torch" in value:
                    found.setdefault(path, []).append(value)
                walk(value, path)
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    for path in glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True):
        walk(json.loads(_read(path)), os.path.relpath(path, ROOT))
    return found


def test_the_constraints_file_pins_the_versions_of_the_results():
    pins = _pins()
    quickstart = _readme_comparison()["environment"]
    # torch's local version (+cpu) is the build, not the release: `torch==2.13.0` matches every 2.13.0 build.
    recorded = {package: version.split("+")[0] for package, version in quickstart.items()
                if package not in ("ivon-lora", "cpu")}  # fmt: skip
    assert pins == recorded
    comments = _read("constraints/results.txt")
    for path, environments in _environments().items():
        for environment in environments:
            differ = {p: v for p, v in environment.items() if p in pins and v.split("+")[0] != pins[p]}
            if differ:
                study = path.split("/")[1]
                assert f"results/{study}" in comments and all(f"{p} {v}" in comments for p, v in differ.items()), (
                    f"{path} was made with {differ}: constraints/results.txt must say so"
                )
    assert "pip install -c constraints/results.txt" in comments
    assert "-c constraints/results.txt" in _read("docs/getting-started.md")
    # The library's own requirements stay ranges.
    assert "==" not in _read("pyproject.toml").split("dependencies = [", 1)[1].split("]", 1)[0]


def test_ci_builds_the_docs_strictly_after_the_tests():
    lines = _read(".ci/run").splitlines()
    tests = [i for i, line in enumerate(lines) if line.endswith(".venv/bin/python -m pytest -q")]
    docs = [i for i, line in enumerate(lines) if "mkdocs build --strict" in line and '".[docs]"' in line]
    assert tests and docs and tests[0] < docs[0]
    assert 'docs = ["mkdocs' in _read("pyproject.toml")
    assert re.search(r"^strict: true$", _read("mkdocs.yml"), re.M)


def test_a_study_block_is_rendered_from_the_committed_files():
    import hooks

    block = hooks.study_block("wordfacts_clean-smollm2", depth=1)
    study = json.loads(_read("results/wordfacts_clean-smollm2/study.json"))
    assert study["command"] in block and _read("results/wordfacts_clean-smollm2/study.md").strip() in block
    assert "(../results/wordfacts_clean-smollm2/study.png)" in block
    assert f"peft {study['environment']['peft']}" in block
    source = hooks.study_block("sensitivity-smollm2", depth=1, table=False)
    assert "| score |" not in source and "--parts a" in source
    cpu = json.loads(_read("results/curvature/study.json"))["environment"]["cpu"]
    assert f"CPU {cpu['capability']} ({cpu['threads']} torch threads)" in hooks.study_block("curvature", depth=2)


def test_every_readme_section_moved_to_the_docs():
    """The README's former sections each have a docs page (its content moved there, not dropped)."""
    headings = {
        "Errors and guarantees": "docs/errors.md",
        "Benchmarks": "docs/benchmarks.md",
        "Layout": "docs/layout.md",
        "Multi-GPU and multi-node": "docs/guides/multi-gpu.md",
        "lm-evaluation-harness": "docs/guides/lm-eval.md",
        "Recipes and the CLI": "docs/guides/cli-recipes.md",
        "Continual finetuning: the previous posterior as the prior": "docs/guides/continual.md",
        "Merging adapters by their posteriors": "docs/guides/merging.md",
        "The posterior: sample, temper, prune, export": "docs/guides/posterior.md",
        "Posterior diagnostics: is the posterior doing anything?": "docs/guides/posterior.md",
        "Settings for your run length": "docs/guides/run-length.md",
        "Generative finetuning (SFT) through TRL": "docs/guides/sft.md",
        "Scoring and metrics": "docs/guides/evaluation.md",
    }
    for heading, page in headings.items():
        assert re.search(rf"^#+ {re.escape(heading)}$", _read(page), re.M), f"{page} lacks {heading}"
    nav = _read("mkdocs.yml")
    for page in _pages()[1:]:
        relative = os.path.relpath(os.path.join(ROOT, page), os.path.join(ROOT, "docs"))
        assert relative in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_readmes_links_into_the_docs_name_existing_pages():
    """The README is read on GitHub, outside the strict site build: its links into docs/ are checked here."""
    links = re.findall(r"\]\(((?:docs|results|constraints)/[^)#]+)(?:#[^)]*)?\)", _read("README.md"))
    assert len(links) >= 20
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), f"README links to {link}, which does not exist"
