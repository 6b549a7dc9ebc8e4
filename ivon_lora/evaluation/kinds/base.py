"""What a kind of evaluation is: the `EvalKind` strategy type and its registry; `evaluation.run` drives them.

A kind (multiple choice, generative, SFT, lm-eval) is what differs between evaluations, as functions of the plan
with no state between calls: which options it reads (`accepts`; every other option given is refused, naming the
kinds that read it), its tasks and splits (`resolve`, into the plan), its data (`load`), one run's scores
(`score`: predictions and their metrics), what combines runs (`combine`: an ensemble, temperature scaling) and its
report (`report`, `write_files`, `tables`). Each step returns what the next one takes:
plan -> data -> scores per run -> report.

A fifth kind is one `EvalKind` subclass with `@register_kind` in a module that `kinds/__init__` imports: its
`applies` decides, from the options and the run's recipe, when it runs (exactly one registered kind must apply to
any options), and its `accepts` which EvalConfig fields it reads.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...registry import Registry

# EvalConfig fields every kind reads.
COMMON_OPTIONS = frozenset({"run_dir", "out", "overwrite", "samples", "batch_size", "limit", "seed", "baseline",
                            "trust_remote_code"})  # fmt: skip
# How a kind's runs are evaluated at a test-time posterior (one pruning fraction, one temperature).
PRUNING_OPTIONS = frozenset({"prune_fractions", "temperatures", "prune_scope", "prune_mode", "prune_criterion"})

EVAL_KINDS: Registry[type[EvalKind]] = Registry("eval kind")


def register_kind(cls: type[EvalKind]) -> type[EvalKind]:
    """Register `cls` under `cls.name` (a name given twice is an error, not a silent replacement)."""
    return EVAL_KINDS.register(cls.name, cls)


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


class EvalKind:
    """One kind of evaluation (see the module doc): class attributes and classmethods, no instances."""

    name: ClassVar[str]
    description: ClassVar[str]  # in messages: "--x is for multiple-choice tasks, not <description>"
    accepts: ClassVar[frozenset[str]]  # EvalConfig fields this kind reads, besides COMMON_OPTIONS
    sweeps: ClassVar[bool] = False  # several pruning fractions / temperatures; else one of each

    @classmethod
    def applies(cls, options, recipe) -> bool:
        """Whether this kind evaluates `options` for a run with `recipe` (None: a run dir without one)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the plan, before any model loads

    @classmethod
    def describe(cls, options) -> str:
        return cls.description

    @classmethod
    def refusal(cls, options, option: str, accepted_by: list[str]) -> str:
        """The error for an option this kind does not read (`accepted_by`: the descriptions of kinds that do)."""
        return f"{flag(option)} is for {' and '.join(accepted_by) or 'no kind'}, not {cls.describe(options)}"

    @classmethod
    def check_options(cls, options) -> None:
        """Refuse every option given that this kind does not read, and sweeps where it has none."""
        from ...errors import UsageError

        for option in given_options(options):
            if option not in COMMON_OPTIONS | cls.accepts:
                accepted_by = [kind.description for kind in EVAL_KINDS.values() if option in kind.accepts]
                raise UsageError(cls.refusal(options, option, accepted_by))
        if not cls.sweeps and (len(options.prune_fractions) > 1 or len(options.temperatures) > 1):
            sweeping = [kind.description for kind in EVAL_KINDS.values() if kind.sweeps]
            raise UsageError(
                f"sweeps are for {' and '.join(sweeping)}, not {cls.describe(options)}: pass one "
                "--prune-fractions and one --temperatures"
            )

    @classmethod
    def resolve(cls, options, described: list[dict]) -> dict:
        """The kind's fields of the plan (tasks, splits, protocol, ece_bins, answer_scoring...) and "out_name", the
        default output dir's suffix (eval-<out_name> inside the run dir); refusals of what needs no model."""
        raise NotImplementedError

    # ------------------------------------------------------------------ data and runs

    @classmethod
    def load(cls, plan, described: list[dict]):
        """The data the plan scores (after --out is claimed, before any model)."""
        raise NotImplementedError

    @classmethod
    def score(cls, plan, data, described: dict, run):
        """One loaded run's scores under the plan (its test-time posterior built here): what `combine` and
        `report` take."""
        raise NotImplementedError

    @classmethod
    def combine(cls, plan, data, scores: dict) -> dict:
        """Every run's scores by label -> the same with what combines runs added (an ensemble, temperature
        scaling)."""
        return scores

    # ------------------------------------------------------------------ the report

    @classmethod
    def report(cls, plan, data, scores: dict) -> dict:
        """eval.json's content before its plan, protocol and environment."""
        raise NotImplementedError

    @classmethod
    def protocol(cls, plan, data) -> dict:
        raise NotImplementedError

    @classmethod
    def environment(cls) -> dict:
        from ...rundir import environment

        return environment()

    @classmethod
    def json_ready(cls, result: dict) -> dict:
        """`result` as eval.json holds it."""
        return result

    @classmethod
    def write_files(cls, plan, data, scores: dict, staging: str, result: dict) -> None:
        """The per-task files (predictions, plots) into `staging`, named in `result`."""

    @classmethod
    def tables(cls, plan, data, result: dict) -> tuple[str, str]:
        """(the table logged at the end, eval.md's text)."""
        raise NotImplementedError


def protocol_preset(options, recipe):
    """The protocol preset (`tasks.Protocol`) of a multiple-choice evaluation: --protocol, else the run's own."""
    from ...config.arguments import run_default
    from ...tasks import get_protocol

    return get_protocol(options.protocol or run_default(recipe, "protocol"))


def reported_ece_bins(bins, preset) -> tuple[int, ...]:
    """The ECE bin counts reported under `preset`: those asked for and the preset's headline one."""
    return tuple(sorted(set(bins) | {preset.ece_bins}))


def run_record(run, posterior, fraction: float, temperature: float, **prune_options) -> dict:
    """What every kind's report records of a run besides its metrics: the test-time pruning and temperature (and
    those its dir holds already, a pruned dir's), and the run it started from (continual finetuning)."""
    from ...continual import started_from

    if posterior is None:
        return started_from(run)
    return {"pruning": run.posterior.evaluation_record(fraction, temperature, **prune_options), **started_from(run)}


def test_time_posterior(plan, run, fraction: float | None = None, temperature: float | None = None):
    """The run's posterior pruned and tempered as the plan asks (or at `fraction`, `temperature`); None without
    one."""
    fraction = plan.test_time[0] if fraction is None else fraction
    temperature = plan.test_time[1] if temperature is None else temperature
    if run.posterior is None or (fraction, temperature) == (0.0, 1.0):
        return run.posterior
    return run.posterior.at_test_time(fraction, temperature, **plan.prune_options())


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
