"""The protocol of `ivon-lora compare`, in the order that keeps the test split out of every choice:

1. each grid point trained on the selection seeds and scored on the selection split; the point with the best mean
   selection metric (of the method's own predictive) is chosen;
2. the chosen point trained on the reported seeds; with early stopping, each run's checkpoints scored on the
   selection split and the one of lowest NLL kept;
3. only then the reported split: each reported run (with temperature scaling and MC dropout where they apply), each
   early-stopped checkpoint, each method's ensemble.

Training and evaluation are the two functions the protocol is given (`ivon-lora train`'s `run_train` and
`ivon-lora eval`'s `run_eval`), so every number is the evaluator's. Each training is a run dir, reused when it is
complete and its resolved recipe is the planned one; each evaluation is an eval output dir, reused when the request
recorded beside it (its options and the SHA-256 of the adapters it scored) is the same: a killed compare resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re

from .plan import Method, Plan, training_steps

logger = logging.getLogger(__name__)

REQUEST_SUFFIX = ".request.json"  # beside an eval output dir: what it was asked, for reuse on resume


@dataclasses.dataclass
class Outcome:
    """What the protocol produced: the choice, the runs and every evaluation (eval output dir and eval.json)."""

    chosen: dict[str, int]  # method -> candidate index
    selection: dict[str, dict]  # method -> {"values": {candidate: {seed: value}}, "means": [...]}
    runs: dict[str, dict]  # run dir -> {"method", "candidate", "seed", "stage", "reused"}
    reported: dict[str, dict[int, str]]  # method -> seed -> run dir
    stopped: dict[str, dict[int, dict]]  # method -> seed -> {"dir", "step", "nll": {dir: value}}
    tests: dict[tuple, tuple[str, dict]]  # (method, seed | "ensemble", "run" | "stopped") -> (eval dir, eval.json)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def own_predictive(result: dict, task: str, label: str, has_posterior: bool) -> str:
    """Which predictive of a run's eval.json entry is the method's own: an IVON run's S-sample predictive (its
    posterior mean without samples), any other run at its weights ("mean"; its MC-dropout samples are a baseline)."""
    metrics = result["tasks"][task]["runs"][label]
    return "sampled" if has_posterior and "sampled" in metrics else "mean"


def run_label(result: dict, run_dir: str) -> str:
    """The label eval.json gives the run evaluated from `run_dir` (not its temperature-scaled copy, no ensemble)."""
    wanted = os.path.abspath(run_dir)
    (label,) = [label for label, record in result["runs"].items() if record.get("dir") == wanted]
    return label


class Protocol:
    """Runs a `Plan` with `train(recipe)` and `evaluate(EvalConfig) -> eval.json's content`."""

    def __init__(self, plan: Plan, train, evaluate, progress=None):
        self.plan, self._train, self._evaluate, self.progress = plan, train, evaluate, progress
        self.selection_final = False  # the reported split is read only once this is set
        self.runs: dict[str, dict] = {}

    # ------------------------------------------------------------------------------------------- units of work

    def trained(self, method: Method, candidate: int, seed: int, stage: str) -> str:
        """The run dir of (method, candidate, seed), trained unless a complete run of the same recipe is there."""
        from ..filenames import METRICS_NAME, RECIPE_NAME

        recipe = method.fresh_recipe(candidate, seed)
        run_dir = recipe.training.output_dir
        reused = False
        if os.path.isfile(os.path.join(run_dir, METRICS_NAME)) and os.path.isfile(os.path.join(run_dir, RECIPE_NAME)):
            import yaml

            with open(os.path.join(run_dir, RECIPE_NAME)) as f:
                reused = _canonical(yaml.safe_load(f)) == _canonical(recipe.resolved())
        self._status(f"{'reuse' if reused else 'train'} {method.name} c{candidate + 1} seed {seed}")
        if not reused:
            self._train(recipe)
        self.runs[run_dir] = {"method": method.name, "candidate": candidate, "seed": seed, "stage": stage,
                              "reused": reused}  # fmt: skip
        self._advance()
        return run_dir

    def evaluated(self, name: str, **options) -> tuple[str, dict]:
        """(eval output dir, eval.json's content) of the evaluation `options` (EvalConfig fields), under
        OUT/evals/NAME; reused when its recorded request is this one."""
        from ..config import EvalConfig
        from ..filenames import ADAPTER_WEIGHTS_NAME, REPORT_NAME

        if options.get("split") == self.plan.test_split and not self.selection_final:
            raise AssertionError(f"{name}: the reported split is read before the choice is final")
        out = os.path.join(self.plan.config.out, "evals", name)
        config = EvalConfig(out=out, overwrite=True, limit=self.plan.config.limit,
                            batch_size=self.plan.config.batch_size, samples=self.plan.config.samples, **options)  # fmt: skip
        dirs = [config.run_dir, *(config.ensemble or [])]
        request = {"options": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "overwrite")},
                   "adapters": [file_digest(os.path.join(d, ADAPTER_WEIGHTS_NAME)) for d in dirs]}  # fmt: skip
        request_path = out + REQUEST_SUFFIX
        if os.path.isfile(request_path) and os.path.isfile(os.path.join(out, REPORT_NAME)):
            with open(request_path) as f:
                if json.load(f) == _canonical(request):
                    self._status(f"reuse {name}")
                    with open(os.path.join(out, REPORT_NAME)) as report:
                        self._advance()
                        return out, json.load(report)
        self._status(f"evaluate {name}")
        result = self._evaluate(config)
        from ..fileio import write_json_atomic

        write_json_atomic(request_path, _canonical(request))
        self._advance()
        return out, result

    # ------------------------------------------------------------------------------------------- the protocol

    def run(self) -> Outcome:
        plan = self.plan
        chosen, selection = {}, {}
        for method in plan.methods:  # 1. the choice, on the selection split
            if len(method.candidates) == 1:
                chosen[method.name] = 0
                continue
            values = {}
            for candidate in range(len(method.candidates)):
                for seed in plan.selection_seeds:
                    run_dir = self.trained(method, candidate, seed, "selection")
                    _, result = self.evaluated(f"{method.name}/c{candidate + 1}-seed{seed}-{plan.select_split}",
                                               run_dir=run_dir, split=plan.select_split)  # fmt: skip
                    label = run_label(result, run_dir)
                    own = own_predictive(result, plan.task, label, method.has_posterior)
                    values.setdefault(candidate, {})[seed] = result["tasks"][plan.task]["runs"][label][own][
                        plan.config.select_metric
                    ]
            chosen[method.name], selection[method.name] = _choose(values, plan.config.select_metric)
        reported = {m.name: {s: self.trained(m, chosen[m.name], s, "reported") for s in plan.reported_seeds}
                    for m in plan.methods}  # fmt: skip
        stopped = {}
        for method in plan.methods:  # 2. early stopping, on the selection split
            if "early_stopping" in method.baselines:
                recipes = {seed: method.recipe(chosen[method.name], seed) for seed in plan.reported_seeds}
                stopped[method.name] = {seed: self._early_stopped(method, seed, run_dir, training_steps(recipes[seed]))
                                        for seed, run_dir in reported[method.name].items()}  # fmt: skip
        self.selection_final = True
        tests = {}
        for method in plan.methods:  # 3. the reported split
            samples = plan.config.samples
            for seed, run_dir in reported[method.name].items():
                options = {"run_dir": run_dir, "split": plan.test_split}
                if "temperature" in method.baselines:
                    options.update(temperature_scaling=True, select_split=plan.select_split)
                if "mc_dropout" in method.baselines:
                    recipe = method.recipe(chosen[method.name], seed)
                    options["mc_dropout_samples"] = samples if samples is not None else recipe.run.final_eval_samples
                tests[(method.name, seed, "run")] = self.evaluated(f"{method.name}/seed{seed}-{plan.test_split}",
                                                                   **options)  # fmt: skip
                if method.name in stopped and stopped[method.name][seed]["dir"] != run_dir:
                    checkpoint = stopped[method.name][seed]["dir"]
                    tests[(method.name, seed, "stopped")] = self.evaluated(
                        f"{method.name}/seed{seed}-{os.path.basename(checkpoint)}-{plan.test_split}",
                        run_dir=checkpoint, split=plan.test_split)  # fmt: skip
            if "ensemble" in method.baselines:
                dirs = list(reported[method.name].values())
                tests[(method.name, "ensemble", "run")] = self.evaluated(
                    f"{method.name}/ensemble-{plan.test_split}", run_dir=dirs[0], ensemble=dirs, split=plan.test_split
                )
        return Outcome(chosen, selection, self.runs, reported, stopped, tests)

    def _early_stopped(self, method: Method, seed: int, run_dir: str, final_step: int) -> dict:
        """The checkpoint (or the final run) of `run_dir` whose own predictive has the lowest selection-split NLL."""
        plan = self.plan
        checkpoints = sorted((int(match.group(1)), os.path.join(run_dir, name)) for name in os.listdir(run_dir)
                             if (match := re.fullmatch(r"checkpoint-(\d+)", name)))  # fmt: skip
        candidates = [(step, path) for step, path in checkpoints if step != final_step] + [(final_step, run_dir)]
        nll = {}
        for step, path in candidates:
            name = f"{method.name}/seed{seed}-{'final' if path == run_dir else os.path.basename(path)}"
            _, result = self.evaluated(f"{name}-{plan.select_split}", run_dir=path, split=plan.select_split)
            label = run_label(result, path)
            own = own_predictive(result, plan.task, label, method.has_posterior)
            nll[step] = result["tasks"][plan.task]["runs"][label][own]["nll"]
        best = min(nll, key=lambda step: (nll[step], step))  # ties: the earlier checkpoint
        return {"dir": dict(candidates)[best], "step": best, "nll": nll}

    def _status(self, text: str) -> None:
        logger.info("compare: %s", text)
        if self.progress is not None:
            self.progress.set_postfix_str(text, refresh=True)

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update()


def _choose(values: dict[int, dict[int, float]], metric: str) -> tuple[int, dict]:
    """The candidate with the best mean `metric` over the selection seeds (ties: the first)."""
    from ..vocabulary import selection_criteria

    higher = selection_criteria()[metric]
    means = {candidate: sum(by_seed.values()) / len(by_seed) for candidate, by_seed in values.items()}
    best = sorted(means, key=lambda c: (-means[c] if higher else means[c], c))[0]
    return best, {"metric": metric, "values": {c: dict(v) for c, v in values.items()}, "means": means}


def _canonical(value):
    """`value` as JSON reads it back (tuples as lists, keys as strings), for comparisons with what a file holds."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
