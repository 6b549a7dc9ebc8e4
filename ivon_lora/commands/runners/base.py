"""What a kind of `ivon-lora eval` is: the `Runner` type and its registry; `commands/eval.py` drives the kinds.

A kind (multiple choice, generative, SFT, lm-eval) is what differs between evaluations: which options it reads
(`accepts`: every other option given is refused, naming the kinds that take it), how it resolves them and loads its
data (`resolve`, `load_data`), how it evaluates one run (`evaluate`), and what it writes (`summary`, `protocol`,
`write_files`, `tables`). The driver does what every kind shares, once, in this order: describe the runs, refuse
options, resolve, default and check --out, load the data, then per run load it, build its test-time posterior,
evaluate it and free it; then protocol and environment, the staged write of eval.json / eval.md, the logged table.

A fifth kind is one `Runner` class with `@register_runner` (in a module of this package that its `__init__`
imports): its `applies` decides, from the options and the run's recipe, when it runs (exactly one registered kind
must apply to any options), and its `accepts` which EvalConfig fields it reads.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...registry import Registry

# EvalConfig fields every kind reads.
COMMON_OPTIONS = frozenset({"run_dir", "out", "overwrite", "samples", "batch_size", "limit", "seed", "baseline",
                            "trust_remote_code"})  # fmt: skip
# How a kind's results are evaluated at a test-time posterior (one pruning fraction, one temperature).
PRUNING_OPTIONS = frozenset({"prune_fractions", "temperatures", "prune_scope", "prune_mode", "prune_criterion"})

RUNNERS: Registry[type[Runner]] = Registry("eval runner")


def register_runner(cls: type[Runner]) -> type[Runner]:
    """Register `cls` under `cls.name` (a name given twice is an error, not a silent replacement)."""
    return RUNNERS.register(cls.name, cls)


def flag(option: str) -> str:
    """The command-line flag of an EvalConfig field."""
    return "--" + option.replace("_", "-")


def given_options(options) -> list[str]:
    """The EvalConfig fields whose value is not their default (what the user asked for): the switches first (a
    switch names the feature asked for, e.g. --temperature-scaling; its values, e.g. --select-split, follow), then
    in field order."""
    given = []
    for field in dataclasses.fields(options):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if field.name == "prune_fractions" and options.sweep:
            continue  # set by --sweep, which is the option given
        if getattr(options, field.name) != default:
            given.append(field.name)
    return sorted(given, key=lambda name: not isinstance(getattr(options, name), bool))


class Runner:
    """One kind of evaluation of run dirs (see the module doc). Subclasses set the class attributes and override
    `resolve`, `evaluate`, `summary`, `protocol`, `tables`, and where needed `load_data`, `posterior_for`,
    `finish`, `write_files`, `environment`."""

    name: ClassVar[str]
    description: ClassVar[str]  # in messages: "--x is for multiple-choice tasks, not <description>"
    accepts: ClassVar[frozenset[str]]  # EvalConfig fields this kind reads, besides COMMON_OPTIONS
    sweeps: ClassVar[bool] = False  # several pruning fractions / temperatures; else one of each

    def __init__(self, options, described: list[dict]):
        self.options = options
        self.described = described  # the run, then any baseline (and ensemble members), from rundir.describe_run
        self.main = described[0]
        self.recipe = self.main["recipe"]

    @classmethod
    def applies(cls, options, recipe) -> bool:
        """Whether this kind evaluates `options` for a run with `recipe` (None: a run dir without one)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ before any model loads

    def refusal(self, option: str, accepted_by: list[str]) -> str:
        """The error for an option this kind does not read (`accepted_by`: the descriptions of kinds that do)."""
        return f"{flag(option)} is for {' and '.join(accepted_by) or 'no kind'}, not {self.describe()}"

    def describe(self) -> str:
        return self.description

    def check_options(self) -> None:
        """Refuse every option given that this kind does not read, and sweeps where it has none."""
        from ...errors import UsageError

        for option in given_options(self.options):
            if option not in COMMON_OPTIONS | self.accepts:
                accepted_by = [kind.description for kind in RUNNERS.values() if option in kind.accepts]
                raise UsageError(self.refusal(option, accepted_by))
        if not self.sweeps and (len(self.options.prune_fractions) > 1 or len(self.options.temperatures) > 1):
            sweeping = [kind.description for kind in RUNNERS.values() if kind.sweeps]
            raise UsageError(
                f"sweeps are for {' and '.join(sweeping)}, not {self.describe()}: pass one "
                "--prune-fractions and one --temperatures"
            )

    def resolve(self) -> str:
        """Check and settle everything that needs no model, and return the default output dir's name (inside the
        run dir)."""
        raise NotImplementedError

    def load_data(self) -> None:
        """Load the data (after --out is checked; before any model)."""

    # ------------------------------------------------------------------ per run

    def posterior_for(self, described: dict, run):
        """The test-time posterior of a loaded run: pruned and tempered as asked (None without a posterior)."""
        fraction, temperature = self.options.prune_fractions[0], self.options.temperatures[0]
        if run.posterior is None or (fraction, temperature) == (0.0, 1.0):
            return run.posterior
        return run.posterior.at_test_time(fraction, temperature, **self.prune_options())

    def prune_options(self) -> dict:
        return {"scope": self.options.prune_scope, "mode": self.options.prune_mode,
                "criterion": self.options.prune_criterion}  # fmt: skip

    def evaluate(self, described: dict, run, posterior) -> None:
        raise NotImplementedError

    @staticmethod
    def run_record(run, posterior, fraction: float, temperature: float, **prune_options) -> dict:
        """What every kind's report records of a run besides its metrics: the test-time pruning and temperature (and
        those its dir holds already, a pruned dir's), and the run it started from (continual finetuning)."""
        from ...continual import started_from

        if posterior is None:
            return started_from(run)
        return {"pruning": run.posterior.evaluation_record(fraction, temperature, **prune_options), **started_from(run)}

    def finish(self) -> None:
        """After every run: what combines runs (an ensemble, temperature scaling)."""

    # ------------------------------------------------------------------ the report

    def summary(self) -> dict:
        """eval.json's content before its protocol and environment."""
        raise NotImplementedError

    def protocol(self) -> dict:
        raise NotImplementedError

    def environment(self) -> dict:
        from ...rundir import environment

        return environment()

    def json_ready(self, result: dict) -> dict:
        """`result` as eval.json holds it."""
        return result

    def write_files(self, staging: str, result: dict) -> None:
        """The per-task files (predictions, plots) into `staging`, named in `result`."""

    def tables(self, result: dict) -> tuple[str, str]:
        """(the table logged at the end, eval.md's text)."""
        raise NotImplementedError


def task_kind(names: list[str]) -> str:
    """The kind of the tasks `names` (one kind per call); an unknown name or mixed kinds is a `UsageError`."""
    from ...errors import UsageError
    from ...tasks import get_task

    kinds = {}
    for name in names:
        try:
            kinds.setdefault(get_task(name).kind, []).append(name)
        except KeyError as error:
            raise UsageError(f"--task: {error.args[0]}") from None
    if len(kinds) > 1:
        raise UsageError("--task mixes " + " and ".join(f"{kind.replace('_', '-')} ({', '.join(tasks)})"
                                                        for kind, tasks in kinds.items()) + " tasks: evaluate each "
                         "kind in its own call")  # fmt: skip
    return next(iter(kinds))
