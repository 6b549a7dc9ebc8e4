"""Study numbers in the README and the docs, held to the committed results under results/.

`readme_blocks` renders the README's results from a comparison's compare.json: its rows (means with 95% confidence
intervals over the seeds), IVON's paired differences against each of them (95% paired-bootstrap intervals) and the
verdicts those intervals allow. `unbacked_numbers` lists the numbers of a page that its declared sources do not hold: a
page names the JSON files it quotes in a `<!-- numbers: results/... -->` line (`FILE.json#key/key` for a part of
one), and every decimal number in its prose and tables (code blocks and inline code aside) must be one of their
values as the page rounds it (x1 or x100, for percentages), or a number of the committed study.md next to one of
them (the tests hold each study.md equal to what its script renders from study.json). A summary names the pages it
quotes instead (`studies/continual.md`): its numbers must be shown there, where they are checked in turn. A page's
numbers that are not results (a paper's, a setting) are listed after `not-results:` on that line. `tests/test_docs.py` runs the check on the README and every docs page.
"""

from __future__ import annotations

import json
import math
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's comparison (results/NAME/compare.json) and the row its differences are taken from.
README_COMPARISON = "compare-wordfacts_clean-smollm2"
README_METHOD = "wordfacts_clean-ivon"
# The columns of a comparison's tables in the README and the study pages (compare.json's metric names).
COMPARE_COLUMNS = (("accuracy", "accuracy (%)"), ("nll", "NLL"), ("ece_10", "ECE, 10 bins (%)"), ("brier", "Brier"))
# A decimal number, not part of a version (0.4.13), a name (Llama-3.2-1B, Qwen2.5) or a size with its unit (0.5B).
NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)\d+\.\d+(?!\.?\d)(?![A-Za-z])")
DECLARATION = re.compile(r"^<!-- numbers: (.*?) -->$", re.S | re.M)


def compare_row_names(report: dict) -> dict[str, str]:
    """compare.json's row names as a reader knows them: the optimizer for a method's own row (with its sample count
    for a posterior's predictive), then the baseline ("AdamW + temperature", "AdamW, deep ensemble of 5 seeds")."""
    from ivon_lora.comparison.scoring import BASELINE_ROWS

    names = {}
    for name, row in report["rows"].items():
        method = row["method"]
        recipe = next(run["recipe"] for run in report["runs"].values() if run["method"] == method)
        optimizer = "IVON" if recipe["optim"] == "ivon" else "AdamW"
        seeds = len(report["seeds"]["reported"])
        samples = recipe.get("final_eval_samples")
        if row["baseline"] is None:
            names[name] = f"{optimizer}, {samples} posterior samples" if optimizer == "IVON" and samples else optimizer
        elif row["baseline"] == "ensemble":
            names[name] = (
                f"{optimizer}, deep ensemble of {seeds} {'posterior means' if optimizer == 'IVON' else 'seeds'}"
            )
        elif row["baseline"] == "mc_dropout":
            names[name] = f"{optimizer}, {samples} MC-dropout samples"
        elif row["baseline"] == "temperature" and optimizer == "IVON":  # tempers the posterior mean
            names[name] = f"{optimizer}, posterior mean + temperature"
        else:
            names[name] = f"{optimizer} {BASELINE_ROWS[row['baseline']]}"
    return names


def compare_rows_table(report: dict, columns=COMPARE_COLUMNS) -> str:
    """Each row of a comparison on its reported split: the mean over the reported seeds and its 95% t-interval over
    them (the ensemble is one model of every seed: its value alone), as compare.md writes them."""
    from ivon_lora.comparison.report import summary_text
    from ivon_lora.comparison.stats import markdown_table

    names = compare_row_names(report)
    rows = [[names[name], *(summary_text(row["summary"][key], key) for key, _ in columns)]
            for name, row in report["rows"].items()]  # fmt: skip
    return markdown_table(["predictive", *(title for _, title in columns)], rows)


def compare_seed_table(report: dict, method: str, columns=COMPARE_COLUMNS) -> str:
    """`method`'s row seed by seed (what `ivon-lora train` prints for that seed's recipe), as compare.md rounds."""
    from ivon_lora.comparison.report import summary_text
    from ivon_lora.comparison.stats import markdown_table

    per_seed = report["rows"][method]["per_seed"]
    rows = [[str(seed), *(summary_text({"mean": per_seed[str(seed)][key], "interval": None}, key) for key, _ in columns)]
            for seed in report["seeds"]["reported"]]  # fmt: skip
    return markdown_table(["seed", *(title for _, title in columns)], rows)


def compare_differences_table(report: dict, method: str, columns=COMPARE_COLUMNS) -> str:
    """`method`'s own row minus every other row: the paired difference (mean over seeds) with its 95%
    paired-bootstrap interval, in bold where the interval excludes 0, and how many seeds favour the method."""
    from ivon_lora.comparison.report import difference_text
    from ivon_lora.comparison.stats import markdown_table

    names = compare_row_names(report)
    found = {(d["against"], d["metric"]): d for d in report["differences"] if d["method"] == method}
    seeds = len(report["seeds"]["reported"])
    rows = []
    for other in report["rows"]:
        if other == method:
            continue
        cells = []
        for key, _ in columns:
            difference = found[(other, key)]
            text = difference_text(difference)
            text = f"**{text}**" if difference["verdict"] != "no clear difference" else text
            cells.append(f"{text} ({difference['seeds_favouring_method']}/{seeds})")
        rows.append([names[other], *cells])
    return markdown_table([f"{names[method]} minus", *(title for _, title in columns)], rows)


def compare_verdicts(report: dict, method: str, columns=COMPARE_COLUMNS) -> str:
    """One line per other row: where `method`'s paired interval excludes 0 (better or worse, with the difference),
    and where it does not (no clear difference), in the columns' order."""
    from ivon_lora.comparison.report import difference_text

    names = compare_row_names(report)
    found = {(d["against"], d["metric"]): d for d in report["differences"] if d["method"] == method}
    titles = dict((key, title.split(" (")[0].split(",")[0]) for key, title in columns)
    lines = []
    for other in report["rows"]:
        if other == method:
            continue
        parts = []
        for verdict in ("better", "worse"):
            keys = [key for key, _ in columns if found[(other, key)]["verdict"] == verdict]
            if keys:
                parts.append(f"{verdict} on " + ", ".join(f"{titles[k]} ({difference_text(found[(other, k)])})"
                                                          for k in keys))  # fmt: skip
        unclear = [titles[key] for key, _ in columns if found[(other, key)]["verdict"] == "no clear difference"]
        if unclear:
            parts.append("no clear difference on " + ", ".join(unclear))
        lines.append(f"- against {names[other]}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def readme_blocks(report: dict, method: str = README_METHOD) -> list[str]:
    """The README's rendered results, in its order: the rows, `method`'s differences, the verdicts, `method` seed by
    seed."""
    return [compare_rows_table(report), compare_differences_table(report, method), compare_verdicts(report, method),
            compare_seed_table(report, method)]  # fmt: skip


def _prose(markdown: str) -> str:
    """The text a reader sees as numbers: no fenced code, no inline code, no link targets, no HTML comments."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    markdown = re.sub(r"<!--.*?-->", "", markdown, flags=re.S)
    markdown = re.sub(r"`[^`\n]*`", "", markdown)
    markdown = re.sub(r"arXiv:? ?\d+\.\d+", "", markdown, flags=re.I)
    return re.sub(r"\]\([^)]*\)", "]", markdown)


def _values(node, out: set) -> set:
    if isinstance(node, dict):
        for key, value in node.items():
            _values(key, out)
            _values(value, out)
    elif isinstance(node, list):
        for value in node:
            _values(value, out)
    elif isinstance(node, bool):
        pass
    elif isinstance(node, (int, float)):
        if abs(node) < 1e12:  # larger is no quoted number (nor an infinity)
            out.add(float(node))
    elif isinstance(node, str):  # numbers inside texts: a command's flags, a chosen setting
        out |= {float(text) for text in re.findall(r"\d+(?:\.\d+)?", node)}
    return out


def declared(markdown: str) -> tuple[list[str], set[str]]:
    """The JSON files a page declares it quotes, and the numbers it declares are not results."""
    match = DECLARATION.search(markdown)
    if match is None:
        return [], set()
    text, _, settings = match.group(1).partition("not-results:")
    return text.split(), set(settings.split())


def _shown(values: set, digits: int) -> set[str]:
    shown = set()
    for value in values:
        for scale in (1, 100):
            for rounded in (round(value * scale, digits), math.floor(value * scale * 10**digits + 0.5) / 10**digits):
                shown.add(f"{abs(rounded):.{digits}f}")
    return shown


def _load(source: str):
    """The values a source holds: `results/.../X.json` (all of it) or `X.json#key/key` (that part of it)."""
    path, _, keys = source.partition("#")
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        node = json.load(f)
    for key in filter(None, keys.split("/")):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def table_path(name: str) -> str:
    """The rendered table of the results under results/NAME: a study's study.md, or a comparison's compare.md."""
    folder = os.path.join(ROOT, "results", name)
    study = os.path.join(folder, "study.md")
    return study if os.path.isfile(study) else os.path.join(folder, "compare.md")


def page_numbers(path: str) -> set[str]:
    """The numbers a docs page shows: its prose and tables, and the tables of the studies its markers include."""
    with open(path, encoding="utf-8") as f:
        markdown = f.read()
    numbers = set(NUMBER.findall(_prose(markdown)))
    for name in re.findall(r"^<!-- study: ([\w./-]+) -->$", markdown, re.M):
        with open(table_path(name), encoding="utf-8") as f:
            numbers |= set(NUMBER.findall(f.read()))
    return numbers


def unbacked_numbers(markdown: str, where: str = ROOT) -> list[str]:
    """The decimal numbers of `markdown` that its declared sources do not hold (see the module's docstring).
    `where`: the page's folder, against which a source that is another page (a .md path) is read."""
    sources, settings = declared(markdown)
    values, exact = set(), set()
    for source in sources:
        if source.endswith(".md"):  # a summary quotes the pages it links, each checked against its own sources
            exact |= page_numbers(os.path.join(where, source))
            continue
        _values(_load(source), values)
        folder = os.path.dirname(source.partition("#")[0])
        if folder.startswith("results/") and os.path.isfile(table_path(folder.removeprefix("results/"))):
            with open(table_path(folder.removeprefix("results/")), encoding="utf-8") as f:
                exact |= set(NUMBER.findall(f.read()))
    shown_by_digits = {}
    unbacked = []
    for number in NUMBER.findall(_prose(markdown)):
        digits = len(number.split(".")[1])
        if digits not in shown_by_digits:
            shown_by_digits[digits] = _shown(values, digits)
        if number in exact or number in shown_by_digits[digits] or number in settings:
            continue
        unbacked.append(number)
    return unbacked
