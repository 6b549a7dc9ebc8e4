"""The evaluation plan: everything an evaluation does, resolved once, before any model loads, into one immutable
value that eval.json records whole (`EvalPlan.as_dict`).

One rule sets every per-run default, for every kind of task: **the run's own setting unless the command line says
otherwise.** The posterior samples S are the run's `final_eval_samples` (what its metrics.json used), the seed of
the samples its `eval_seed`, the protocol preset its `protocol`; a run dir without a recipe gets the defaults of
`RunArguments`. The plan records which source set S and the seed (`samples_source`, `seed_source`), so a report
says why it used 20 samples and not 10.

`resolve_plan(options)` describes the runs, picks the one kind that applies (`evaluation.kinds`), refuses the
options that kind does not read, and lets the kind settle its tasks and splits; `train` builds the plan of its final
evaluation from the recipe alone (`plan_for_training`), so both score through the same kind, the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config.arguments import run_default


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation does: which runs, on which data, with how many posterior samples, scored and reported
    how. Frozen: every step after `resolve_plan` reads it and none changes it."""

    kind: str  # the registered kind (evaluation.kinds): multiple_choice, generative, sft, lm_eval
    run_dir: str
    out: str
    tasks: tuple[str, ...]
    splits: tuple[str, ...]  # the reported split of each task
    samples: int  # posterior samples S of the sampled predictive (0: the posterior mean only)
    samples_source: str  # what set `samples`: the command line or the run's recipe
    seed: int
    seed_source: str
    batch_size: int
    protocol: str | None = None  # the protocol preset (tasks.protocols), for multiple-choice and lm-eval tasks
    ece_bins: tuple[int, ...] = ()
    answer_scoring: str | None = None
    limit: int | None = None
    file: str | None = None
    baseline: str | None = None
    ensemble: tuple[str, ...] = ()
    mc_dropout_samples: int = 0
    samples_per_pass: int = 0
    # The test-time posterior: one (fraction, temperature), or a sweep chosen on `select_split`.
    prune_fractions: tuple[float, ...] = (0.0,)
    temperatures: tuple[float, ...] = (1.0,)
    prune_scope: str = "global"
    prune_mode: str = "zero"
    prune_criterion: str = "snr"
    sweep: bool = False
    select_split: str | None = None
    select_file: str | None = None
    select_by: str | None = None
    temperature_scaling: bool = False
    risk_averse: bool = False
    decoding: str = "mean"
    sampling_temperature: float = 1.0
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_include_path: str | None = None
    trust_remote_code: bool = False
    # The run dirs in evaluation order: the run, the baseline, the ensemble members (rundir.describe_run's labels).
    labels: tuple[str, ...] = field(default=())

    @property
    def sweeping(self) -> bool:
        return len(self.prune_fractions) > 1 or len(self.temperatures) > 1

    @property
    def test_time(self) -> tuple[float, float]:
        """The one (pruning fraction, temperature) of a plan without a sweep."""
        return self.prune_fractions[0], self.temperatures[0]

    def prune_options(self) -> dict:
        return {"scope": self.prune_scope, "mode": self.prune_mode, "criterion": self.prune_criterion}

    def as_dict(self) -> dict:
        """The plan as eval.json records it (lists for tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}  # fmt: skip


def run_setting(options, recipe, name: str, run_key: str) -> tuple:
    """(value, source) of one per-run setting: the command line's `options.<name>` if given, else the run's own
    `recipe.run.<run_key>` (RunArguments' default for a run dir without a recipe)."""
    if getattr(options, name) is not None:
        return getattr(options, name), f"command line (--{name.replace('_', '-')})"
    if recipe is not None:
        return run_default(recipe, run_key), f"the run's recipe ({run_key})"
    return run_default(recipe, run_key), f"default ({run_key}; the run has no recipe)"


def resolve_plan(options) -> tuple[EvalPlan, list[dict]]:
    """The plan of `options` (an `ivon_lora.config.EvalConfig`) and the described runs (`rundir.describe_run`), in
    evaluation order; every refusal is raised here, before any model loads."""
    import os

    from ..errors import UsageError
    from ..rundir import describe_run
    from .kinds import select_kind

    trust = options.trust_remote_code  # the user's consent to a run's base-model code (rundir.check_remote_code)
    main = describe_run(options.run_dir, set(), trust)
    kind = select_kind(options, main["recipe"])
    kind.check_options(options)
    described = [main]
    if options.baseline:
        described.append(describe_run(options.baseline, {main["label"]}, trust))
    described += [{**describe_run(member, set(), trust), "member": True} for member in options.ensemble or []]
    for run in described[:2]:
        if not run["has_posterior"] and options.mc_dropout_samples and not run["dropout"]:
            raise UsageError(f"--mc-dropout-samples: {run['dir']} has no dropout (lora_dropout 0) to sample: "
                             "evaluate it without MC dropout (--mc-dropout-samples 0)")  # fmt: skip
    if not main["has_posterior"] and (options.sweeping or options.prune_fractions != [0.0]
                                      or options.temperatures != [1.0]):  # fmt: skip
        raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
    samples, samples_source = run_setting(options, main["recipe"], "samples", "final_eval_samples")
    seed, seed_source = run_setting(options, main["recipe"], "seed", "eval_seed")
    settled = kind.resolve(options, described)  # tasks, splits and the kind's own settings
    out_name = settled.pop("out_name")
    out = options.out or os.path.join(options.run_dir, f"eval-{out_name}")
    plan = EvalPlan(
        kind=kind.name, run_dir=os.path.abspath(options.run_dir), out=out, samples=samples,
        samples_source=samples_source, seed=seed, seed_source=seed_source, batch_size=options.batch_size,
        limit=options.limit, file=options.file, baseline=options.baseline, ensemble=tuple(options.ensemble or ()),
        mc_dropout_samples=options.mc_dropout_samples, samples_per_pass=options.samples_per_pass,
        prune_fractions=tuple(options.prune_fractions), temperatures=tuple(options.temperatures),
        prune_scope=options.prune_scope, prune_mode=options.prune_mode, prune_criterion=options.prune_criterion,
        sweep=options.sweep, select_split=options.select_split, select_file=options.select_file,
        select_by=options.select_by if options.sweeping else None, temperature_scaling=options.temperature_scaling,
        risk_averse=options.risk_averse, decoding=options.decoding, sampling_temperature=options.sampling_temperature,
        lm_eval_tasks=tuple(options.lm_eval_tasks or ()), lm_eval_include_path=options.lm_eval_include_path,
        trust_remote_code=trust, labels=tuple(run["label"] for run in described), **settled,
    )  # fmt: skip
    return plan, described


def plan_for_training(recipe, kind: str, samples: int) -> EvalPlan:
    """The plan of `train`'s final evaluation of `recipe` on its eval split: what `ivon-lora eval RUN` resolves for
    the finished run, given the recipe's eval batch size (`--batch-size`); `samples` is 0 without a posterior."""
    from ..tasks import get_protocol
    from .kinds.base import reported_ece_bins

    run, data = recipe.run, recipe.data
    protocol = get_protocol(run.protocol) if kind == "multiple_choice" else None
    return EvalPlan(
        kind=kind, run_dir=recipe.training.output_dir, out=recipe.training.output_dir,
        tasks=(getattr(data, "dataset", None) or "",), splits=(data.eval_split,), samples=samples,
        samples_source="the run's recipe (final_eval_samples)", seed=run.eval_seed,
        seed_source="the run's recipe (eval_seed)", batch_size=recipe.training.per_device_eval_batch_size,
        protocol=run.protocol if protocol else None,
        ece_bins=reported_ece_bins(run.ece_bins, protocol) if protocol else tuple(run.ece_bins),
        answer_scoring=getattr(recipe.model, "answer_scoring", None), limit=data.max_eval_samples,
        file=data.eval_file,
    )  # fmt: skip
