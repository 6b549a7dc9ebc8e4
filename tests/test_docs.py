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
import sys

import pytest

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


def _checked_text(page):
    """A page's text as the number check reads it: the README without its results table, which is checked as
    rendered from its study (`test_the_readmes_results_table_is_rendered_from_the_study`), cell by cell."""
    text = _read(page)
    if page == "README.md":
        study = json.loads(_read(f"results/{study_numbers.README_STUDY}/study.json"))
        text = text.replace(study_numbers.results_table(study), "")
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
    assert study_numbers.unbacked_numbers(page.replace("0.179 vs 0.366", "0.187 vs 0.366")) == ["0.187"]
    readme = _checked_text("README.md")
    assert study_numbers.unbacked_numbers(readme, ROOT) == []
    assert study_numbers.unbacked_numbers(readme.replace("97.0 / NLL 0.128", "97.0 / NLL 0.341"), ROOT) == ["0.341"]


def test_the_readmes_results_table_is_rendered_from_the_study():
    study = json.loads(_read(f"results/{study_numbers.README_STUDY}/study.json"))
    table = study_numbers.results_table(study)
    assert table in _read("README.md")
    # The interval is the mean -+ t * std / sqrt(n) over the study's 3 seeds.
    ivon = study["table"]["IVON, S=10 samples"]["accuracy"]
    half = 4.302652729911275 * ivon["std"] / 3**0.5
    assert f"{ivon['mean'] * 100:.1f} [{(ivon['mean'] - half) * 100:.1f}, {(ivon['mean'] + half) * 100:.1f}]" in table
    # The prose under it says the intervals of IVON and AdamW overlap: they do.
    adamw = study["table"]["AdamW"]["accuracy"]
    adamw_half = 4.302652729911275 * adamw["std"] / 3**0.5
    assert "the intervals overlap" in _read("README.md")
    assert ivon["mean"] - half < adamw["mean"] + adamw_half and adamw["mean"] - adamw_half < ivon["mean"] + half


def test_the_quickstart_digits_are_seed_0_of_the_study_and_the_spread_its_std():
    study = json.loads(_read("results/wordfacts_clean-smollm2/study.json"))
    (seed0,) = [seed for seed in study["per_seed"] if seed["seed"] == 0]
    mean, sampled = seed0["methods"]["IVON, posterior mean"], seed0["methods"]["IVON, S=10 samples"]
    spread = study["table"]["IVON, S=10 samples"]
    page = " ".join(_read("docs/getting-started.md").split())
    digits = (f"posterior mean accuracy {mean['accuracy'] * 100:.1f} / NLL {mean['nll']:.3f} / ECE "
              f"{mean['ece_10'] * 100:.1f} / Brier {mean['brier']:.3f}, and 10 samples {sampled['accuracy'] * 100:.1f} / "
              f"{sampled['nll']:.3f} / {sampled['ece_10'] * 100:.1f} / {sampled['brier']:.3f}")  # fmt: skip
    assert digits in page
    assert (f"standard deviation of {spread['accuracy']['std'] * 100:.1f} points, its NLL {spread['nll']['std']:.3f}, "
            f"its ECE {spread['ece_10']['std'] * 100:.1f}") in page  # fmt: skip
    assert "AVX-512" in page and "AVX2" in page


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
    quickstart = json.loads(_read("results/wordfacts_clean-smollm2/study.json"))["environment"]
    # torch's local version (+cpu) is the build, not the release: `torch==2.13.0` matches every 2.13.0 build.
    recorded = {package: version.split("+")[0] for package, version in quickstart.items() if package != "ivon-lora"}
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
