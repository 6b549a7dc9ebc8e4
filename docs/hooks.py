"""mkdocs hooks: the pages and parts of pages that are generated, not written.

- `reference/cli.md` and `reference/recipe.md`: from the parsers and the recipe's dataclasses (`reference_pages.py`).
- `results/**/*.png`: the studies' committed figures, served as they are in the repository.
- `<!-- study: NAME -->` in a page: the study's command, its environment, its table and its figure, rendered from the
  committed `results/NAME/study.json`, `results/NAME/study.md` and `results/NAME/*.png` (`study_block`; the tests
  hold study.md equal to what the study script renders from study.json), or from a comparison's `compare.json`,
  `compare.md` and `compare.png` (`ivon-lora compare`'s report, held equal to what it renders from compare.json).
  `<!-- study-source: NAME -->`: the same without the table, for a page that sets the study's tables between its
  paragraphs.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, DOCS)
sys.path.insert(0, ROOT)  # the checkout's ivon_lora, as the tests import it

import reference_pages  # noqa: E402

STUDY_MARKER = re.compile(r"^<!-- study(-source)?: ([\w.-]+(?:/[\w.-]+)*) -->$", re.M)
ENVIRONMENT_KEYS = ("environment", "versions")


def study_block(name: str, depth: int = 1, table: bool = True) -> str:
    """A study's command, environment, table (unless `table` is false) and figures, from its committed files under
    results/NAME. `depth`: how many folders the page is below the site root (for the figures' relative paths)."""
    folder = os.path.join(ROOT, "results", name)
    kind = "study" if os.path.isfile(os.path.join(folder, "study.json")) else "compare"
    with open(os.path.join(folder, f"{kind}.json"), encoding="utf-8") as f:
        study = json.load(f)
    parts = []
    command = study.get("command")
    if isinstance(command, list):  # a comparison records its sys.argv, the program by its path
        program = "ivon-lora" if os.path.basename(command[0]) == "ivon-lora" else command[0]
        command = shlex.join([program, *command[1:]])
    if command:
        if not command.startswith(("python", "ivon-lora")):
            command = f"python {command}"
        parts += [f"**Command** (from `{kind}.json`):", "", "```bash", command, "```", ""]
    # A study run in parts (the sensitivity study) records each part's own command.
    commands = [
        part["command"] for part in study.get("parts", {}).values() if isinstance(part, dict) and "command" in part
    ]
    if commands:
        parts += ["**The parts' commands** (from `study.json`):", "", "```bash", *dict.fromkeys(commands), "```", ""]
    environment = next((study[key] for key in ENVIRONMENT_KEYS if key in study), None)
    if environment:
        versions = ", ".join(f"{package} {version}" for package, version in environment.items() if package != "cpu")
        cpu = environment.get("cpu")
        versions += f", CPU {cpu['capability']} ({cpu['threads']} torch threads)" if isinstance(cpu, dict) else ""
        threads = f"; {study['threads']} torch threads" if "threads" in study else ""
        parts += [f"**Environment** (from `{kind}.json`): {versions}{threads}.", ""]
    if table:
        by = "the study script" if kind == "study" else "`ivon-lora compare`"
        parts += [f"**Table** (`results/{name}/{kind}.md`, rendered from `{kind}.json` by {by}):", ""]
        with open(os.path.join(folder, f"{kind}.md"), encoding="utf-8") as f:
            text = f.read().strip()
        # study.md's own headings would compete with the page's.
        parts += [re.sub(r"^#{1,2} ", "### ", text, flags=re.M), ""]
    prefix = "../" * depth
    for figure in sorted(glob.glob(os.path.join(folder, "*.png"))):
        relative = os.path.relpath(figure, ROOT).replace(os.sep, "/")
        parts += [f"![{os.path.basename(figure)} of {name}]({prefix}{relative})", ""]
    return "\n".join(parts)


def on_files(files, config):
    from mkdocs.structure.files import File  # here: study_block (and its test) need no mkdocs

    for path, content in (("reference/cli.md", reference_pages.cli_page()),
                          ("reference/recipe.md", reference_pages.recipe_page())):  # fmt: skip
        files.append(File.generated(config, path, content=content))
    for figure in sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.png"), recursive=True)):
        relative = os.path.relpath(figure, ROOT).replace(os.sep, "/")
        files.append(File.generated(config, relative, abs_src_path=figure))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")
    return STUDY_MARKER.sub(lambda match: study_block(match.group(2), depth, table=not match.group(1)), markdown)
