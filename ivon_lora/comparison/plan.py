"""What `ivon-lora compare` will train and evaluate, resolved and checked before any model loads.

`resolve_plan(config)` reads every recipe, expands its grid, resolves the recipe of every grid point and seed, and
refuses in one line: recipes that train on different data or are no multiple-choice recipes, a grid key a recipe
lacks (or that compare sets itself), a split the task lacks, fewer than 2 reported seeds, seed sets that overlap, a
grid without selection seeds, a baseline that applies to no recipe, unequal training budgets. What it finds but
does not refuse (candidate counts that differ between methods, a recipe's own eval_split replaced) becomes a note of
the report.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
import os
import tempfile
from dataclasses import dataclass, field

from ..errors import RecipeError, UsageError
from .stats import seed_sets

# What each baseline is, derived from the runs compare trains (every method where it applies).
BASELINES = {
    "temperature": "the run at its weights (an IVON run's posterior mean), tempered by one T fitted by NLL on the "
    "selection split",
    "early_stopping": "the checkpoint (final one included) whose method predictive has the lowest NLL on the "
    "selection split",
    "ensemble": "the deep ensemble of the reported seeds' runs at their weights (one model, the same for every seed)",
    "mc_dropout": "S MC-dropout samples of a run without a posterior (lora_dropout > 0)",
}
# Recipe keys compare sets on every run (a grid may not vary them).
OWNED_KEYS = ("seed", "output_dir", "overwrite_output_dir", "eval_split", "save_strategy", "save_steps",
              "resume_from_checkpoint")  # fmt: skip
# What every run of a comparison trains on: the recipes must agree on these.
DATA_KEYS = ("dataset", "train_split", "train_file", "max_train_samples", "max_length", "protocol")


@dataclass
class Method:
    """One recipe compared: its grid (key -> values as typed), its candidates (grid points, key -> value), and the
    resolved recipe of each (candidate, seed)."""

    name: str
    path: str
    axes: dict[str, list[str]]
    candidates: list[dict[str, str]]
    recipes: dict[tuple[int, int], object] = field(default_factory=dict)  # (candidate, seed) -> Recipe
    overrides: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (candidate, seed) -> key=value
    has_posterior: bool = False
    dropout: float = 0.0
    baselines: tuple[str, ...] = ()
    budget: dict = field(default_factory=dict)  # {"steps", "examples_per_step", "examples"}

    def recipe(self, candidate: int, seed: int):
        return self.recipes[(candidate, seed)]

    def fresh_recipe(self, candidate: int, seed: int):
        """The recipe of (candidate, seed) loaded anew (training may change the arguments it is given)."""
        return _load(self.path, self.overrides[(candidate, seed)], self.path, for_training=True)


@dataclass
class Plan:
    config: object  # CompareConfig
    methods: list[Method]
    selection_seeds: list[int]
    reported_seeds: list[int]
    task: str
    train_split: str
    select_split: str
    test_split: str
    baselines: tuple[str, ...]
    notes: list[str]

    def run_dir(self, method: Method, candidate: int, seed: int) -> str:
        return method.recipe(candidate, seed).training.output_dir

    def trainings(self) -> int:
        """How many runs the plan trains: each grid point on the selection seeds (grids of one point skip the
        choice), then the chosen point on the reported seeds."""
        chosen = sum(len(m.candidates) * len(self.selection_seeds) for m in self.methods if len(m.candidates) > 1)
        return chosen + len(self.methods) * len(self.reported_seeds)


def method_names(paths: list[str]) -> list[str]:
    """Each recipe's name in the report: its file name without .yaml, numbered where two are the same."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    return [stem if stems.count(stem) == 1 else f"{index + 1}-{stem}" for index, stem in enumerate(stems)]


def split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside [...] or {...} kept (a list value such as [q_proj, v_proj])."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(specs: list[str] | None, names: list[str]) -> list[dict[str, list[str]]]:
    """The axes of each recipe (key -> values, in the order given) from the --grid specs."""
    axes = [{} for _ in names]
    for spec in specs or []:
        head, separator, values = spec.partition("=")
        target, _, key = head.rpartition(":")
        key = key.strip()
        if not separator or not key or not values.strip() or "" in split_values(values):
            raise UsageError(f"--grid {spec!r}: write [N:]KEY=V1,V2,... (N: a recipe's position or name)")
        if key in OWNED_KEYS:
            raise UsageError(f"--grid {spec!r}: compare sets {key} itself (seeds, run dirs, the selection split and "
                             "the checkpoints are its own): vary another key")  # fmt: skip
        if not target:
            indices = range(len(names))
        elif target.isdigit() and 1 <= int(target) <= len(names):
            indices = [int(target) - 1]
        elif target in names:
            indices = [names.index(target)]
        else:
            raise UsageError(f"--grid {spec!r}: {target!r} is no recipe of this comparison: use its position "
                             f"(1-{len(names)}) or its name ({', '.join(names)})")  # fmt: skip
        for index in indices:
            if key in axes[index]:
                raise UsageError(f"--grid {spec!r}: {names[index]} already has an axis {key}")
            axes[index][key] = split_values(values)
    return axes


def _load(path: str, overrides: list[str], what: str, for_training: bool = False):
    """The recipe at `path` with `overrides`, every key checked; planning (`for_training` False) writes and locks
    nothing: the run dir is claimed when its training starts (`Method.fresh_recipe`)."""
    from ..config import load_recipe

    try:
        recipe = load_recipe(path, overrides, for_training=for_training)
        recipe.training  # noqa: B018 - parses (and so checks) the training keys now
        return recipe
    except RecipeError as error:
        raise RecipeError(f"{what}: {error}") from None


def resolve_plan(config) -> Plan:
    """The plan of `config` (a `CompareConfig`), every recipe resolved and checked (see the module doc)."""
    from ..objectives import get_objective
    from ..tasks import get_task

    names = method_names(config.recipes)
    # Where the runs go; a dry run resolves them under a dir that is never created.
    root = config.out or os.path.join(tempfile.gettempdir(), f"ivon-lora-compare-plan-{os.getpid()}")
    unused = [f"output_dir={os.path.join(root, 'unused')}"]  # a recipe's own output_dir may hold a run: not read
    for path in config.recipes:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Recipe {path!r} does not exist")
    axes = parse_grid(config.grid, names)
    try:
        selection_seeds, reported_seeds = seed_sets(
            config.reported_seeds if config.reported_seeds is not None else config.seeds,
            config.selection_seeds if config.selection_seeds is not None else config.select_seeds,
        )
    except ValueError as error:
        raise UsageError(f"seeds: {error}") from None
    methods = []
    for name, path, grid in zip(names, config.recipes, axes):
        base = _load(path, unused, name)
        if get_objective(base.objective).eval_kind != "multiple_choice":
            raise UsageError(f"{path}: objective {base.objective} has no multiple-choice predictive to compare: "
                             "compare takes multiple-choice (objective: choice) recipes")  # fmt: skip
        resolved = base.resolved()
        for key in grid:
            if key not in resolved:
                close = difflib.get_close_matches(key, list(resolved), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"--grid {key}=...: recipe {path} has no key {key!r}{hint}")
            if key.startswith("ivon_") and not base.training.use_ivon:
                raise UsageError(f"--grid {key}=...: recipe {path} trains with optim {base.training_value('optim')}, "
                                 f"which has no {key} (an IVON key): give this axis to the IVON recipes only "
                                 "(--grid N:KEY=...)")  # fmt: skip
        candidates = [dict(zip(grid, point)) for point in itertools.product(*grid.values())]
        methods.append(Method(name, path, grid, candidates, has_posterior=base.training.use_ivon,
                              dropout=base.model.lora_dropout))  # fmt: skip
    if any(len(m.candidates) > 1 for m in methods) and not selection_seeds:
        raise UsageError("a grid of several points is chosen on selection seeds: pass --select-seeds 1 or more")

    # The data as the runs will train on it: the grid's fixed overrides (e.g. dataset=TASK:test_size=N) applied.
    fixed = [f"{key}={value}" for key, value in methods[0].candidates[0].items()]
    first = _load(methods[0].path, unused + fixed, methods[0].name)
    task = get_task(first.data.dataset)
    baselines = _baselines(config, methods, task)
    for split, flag in ((config.select_split, "--select-split"), (config.split, "--split")):
        if split not in task.splits:
            raise UsageError(f"{flag} {split!r}: task {task.name!r} has no such split ({', '.join(task.splits)})")
    if config.select_split == config.split:
        raise UsageError(f"--select-split {config.select_split!r} is the reported split: choose on a different one")

    notes = []
    seeds = sorted(set(selection_seeds) | set(reported_seeds))
    early_stopping = "early_stopping" in baselines
    for method in methods:
        for candidate, settings in enumerate(method.candidates):
            grid_text = " ".join(f"{key}={value}" for key, value in settings.items())
            what = f"--grid {grid_text}: {method.path}" if grid_text else method.path
            for seed in seeds:
                run_dir = os.path.join(root, "runs", method.name, f"c{candidate + 1}", f"seed{seed}")
                overrides = [f"{key}={value}" for key, value in settings.items()]
                overrides += [f"seed={seed}", f"output_dir={run_dir}", "overwrite_output_dir=true",
                              f"eval_split={config.select_split}"]  # fmt: skip
                recipe = _load(method.path, overrides, what)
                if early_stopping:  # checkpoints evenly spaced over the run, the last at its end
                    steps = training_steps(recipe)
                    if steps < config.checkpoints:
                        raise UsageError(f"--checkpoints {config.checkpoints}: {method.name} trains only {steps} steps")
                    save = ["save_strategy=steps", f"save_steps={steps // config.checkpoints}"]
                    overrides += save
                    recipe = _load(method.path, overrides, what)
                method.recipes[(candidate, seed)] = recipe
                method.overrides[(candidate, seed)] = overrides
        own = _load(method.path, unused, method.name)
        if own.data.eval_split != config.select_split:
            notes.append(f"{method.name}: its recipe's eval_split {own.data.eval_split!r} is replaced by the selection "
                         f"split {config.select_split!r} (the reported split is read only after the choice)")  # fmt: skip
    _check_same_data(methods)
    _check_budgets(methods)
    counts = {m.name: len(m.candidates) for m in methods}
    if len(set(counts.values())) > 1:
        notes.append("the methods were offered different numbers of candidates: "
                     + ", ".join(f"{name} {count}" for name, count in counts.items()))  # fmt: skip
    return Plan(config, methods, selection_seeds, reported_seeds, first.data.dataset, first.data.train_split,
                config.select_split, config.split, baselines, notes)  # fmt: skip


def _baselines(config, methods: list[Method], task) -> tuple[str, ...]:
    """The baselines compared (each with the methods it applies to); one asked for that applies nowhere is refused."""
    asked = config.baselines
    wanted = list(BASELINES) if asked is None else asked
    kept = []
    for name in wanted:
        if name in ("temperature", "early_stopping") and config.select_split not in task.splits:
            if asked is None:
                continue
            raise UsageError(f"--baselines {name}: it is fitted on the held-out split {config.select_split!r}, which "
                             f"task {task.name!r} does not have ({', '.join(task.splits)}): pass --select-split")  # fmt: skip
        applies = [m for m in methods if name != "mc_dropout" or (not m.has_posterior and m.dropout > 0)]
        if not applies:
            if asked is None:
                continue
            raise UsageError("--baselines mc_dropout: no recipe trains without a posterior with lora_dropout > 0, so "
                             "there is no dropout to sample (set lora_dropout, e.g. --grid N:lora_dropout=0.1)")  # fmt: skip
        for method in applies:
            method.baselines += (name,)
        kept.append(name)
    return tuple(kept)


def _check_same_data(methods: list[Method]) -> None:
    """Every run of every method trains on the same task, split and records."""
    seen = {}
    for method in methods:
        for recipe in method.recipes.values():
            data = {key: getattr(recipe.data, key, None) for key in DATA_KEYS if key != "protocol"}
            data["protocol"] = recipe.run.protocol
            seen.setdefault(tuple(sorted(data.items())), method.name)
    if len(seen) > 1:
        described = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in data if v is not None)
                              for data, name in seen.items())  # fmt: skip
        raise UsageError(f"the recipes train on different data ({described}): compare needs one task, split and "
                         "record set for every method")  # fmt: skip


def training_steps(recipe) -> int:
    """The optimizer steps of a run: max_steps, else the epochs over the train split as the Trainer counts them."""
    args = recipe.training
    if args.max_steps > 0:
        return args.max_steps
    data = recipe.data
    examples = _train_examples(data.dataset, data.train_split, data.train_file, data.max_train_samples,
                               recipe.run.protocol)  # fmt: skip
    per_epoch = max(math.ceil(examples / args.per_device_train_batch_size) // args.gradient_accumulation_steps, 1)
    return math.ceil(args.num_train_epochs * per_epoch)


@functools.cache
def _train_examples(dataset: str, split: str, data_file: str | None, limit: int | None, protocol: str) -> int:
    from ..tasks import load_split

    return len(load_split(dataset, split, data_file, limit, protocol=protocol).examples)


def _check_budgets(methods: list[Method]) -> None:
    """Every method is offered the same budgets: optimizer steps x examples per step."""
    offered = {}
    for method in methods:
        budgets = set()
        for recipe in method.recipes.values():
            per_step = recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps
            budgets.add((training_steps(recipe), per_step))
        offered[method.name] = sorted(budgets)
        steps, per_step = offered[method.name][-1]
        method.budget = {"steps": steps, "examples_per_step": per_step, "examples": steps * per_step}
    if len({tuple(b) for b in offered.values()}) > 1:
        described = "; ".join(f"{name}: " + ", ".join(f"{s} steps x {e} examples" for s, e in budgets)
                              for name, budgets in offered.items())  # fmt: skip
        raise UsageError(f"the methods train on different budgets ({described}): give every recipe the same "
                         "max_steps and batch (per_device_train_batch_size x gradient_accumulation_steps)")  # fmt: skip
