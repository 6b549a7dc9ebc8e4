"""Multiple-choice tasks: choice probabilities at the mean and over S posterior (or MC-dropout) samples, optionally
pruned / tempered or swept on a held-out split, beside a baseline, a deep ensemble and temperature-scaled runs
(`ivon_lora.evaluation`: predict, sweep, baselines, report)."""

from __future__ import annotations

import logging
import os

from .base import PRUNING_OPTIONS, Runner, register_runner, task_kind

logger = logging.getLogger(__name__)


@register_runner
class ChoiceRunner(Runner):
    name = "multiple_choice"
    description = "multiple-choice tasks"
    accepts = PRUNING_OPTIONS | {"task", "split", "file", "protocol", "ece_bins", "mc_dropout_samples", "sweep",
                                 "ensemble", "temperature_scaling", "risk_averse", "select_split", "select_file",
                                 "select_by", "batched_samples"}  # fmt: skip
    sweeps = True

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...objectives import get_objective
        from ...tasks.base import MULTIPLE_CHOICE

        if options.lm_eval_tasks:
            return False
        if options.task:
            return task_kind(options.task) == MULTIPLE_CHOICE
        return recipe is None or get_objective(recipe.objective).eval_kind == cls.name

    def describe(self) -> str:
        return f"{self.description} ({', '.join(self.options.task)})" if self.options.task else self.description

    def resolve(self) -> str:
        from ...errors import UsageError
        from ...tasks import get_protocol

        options, recipe = self.options, self.recipe
        if options.sweeping and options.select_split is None:
            raise UsageError("A sweep chooses its configuration on a held-out split: pass --select-split")
        if options.temperature_scaling and options.select_split is None:
            raise UsageError("--temperature-scaling fits its temperature on a held-out split: pass --select-split")
        if options.risk_averse and options.select_split is None:
            raise UsageError("--risk-averse chooses its kappa on a held-out split: pass --select-split")
        self.answer_scoring = _common_answer_scoring(self.described)
        self.preset = get_protocol(options.protocol or (recipe.run.protocol if recipe else "ivon-lora"))
        tasks = options.task or ([recipe.data.dataset] if recipe else None)
        if not tasks:
            raise UsageError(f"{options.run_dir} has no recipe.yaml naming its task: pass --task")
        task_kind(tasks)
        if (options.file or options.select_split) and len(tasks) > 1:
            raise UsageError("--file, sweeps and temperature scaling take a single --task")
        self.tasks = tasks
        own_task = recipe is not None and tasks == [recipe.data.dataset]
        self.split = options.split or (recipe.data.eval_split if own_task else self.preset.report_split)
        self.num_samples = self.preset.num_samples if options.samples is None else options.samples
        self.ece_bins = sorted(set(options.ece_bins) | {self.preset.ece_bins})
        if options.select_split == self.split:
            raise UsageError(f"--select-split {self.split!r} is the reported split: choose on a different one")
        if not self.main["has_posterior"] and (options.sweeping or options.prune_fractions != [0.0]
                                               or options.temperatures != [1.0]):  # fmt: skip
            raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
        return f"eval-{self.split}"

    def load_data(self) -> None:
        from ...tasks import get_task, load_split

        options, preset = self.options, self.preset
        self.loaded = {task: load_split(task, self.split, options.file, options.limit, protocol=preset)
                       for task in self.tasks}  # fmt: skip
        self.select_split = (load_split(self.tasks[0], options.select_split, options.select_file, options.limit,
                                        protocol=preset) if options.select_split else None)  # fmt: skip
        self.result = {"tasks": {task: {"split": self.split, "num_examples": len(part.examples),
                                        "task": get_task(task).as_dict(), "data": part.as_dict()}
                                 for task, part in self.loaded.items()}}  # fmt: skip
        self.predictions = {task: {} for task in self.tasks}
        self.held_out = {}  # run label -> its predictions at the weights on the selection split (temperature scaling)
        self.member_predictions = {task: [] for task in self.tasks}
        self.runs = {}

    def _predict(self, run, examples, **options):
        from ...evaluation.predict import predict

        return predict(run.model, run.tokenizer, self._formatted(run, examples), max_length=self._max_length(run),
                       batch_size=self.options.batch_size, seed=self.options.seed, **options)  # fmt: skip

    def posterior_for(self, described: dict, run):
        options = self.options
        if described.get("member") or run.posterior is None:
            self.pruning = {"fraction": 0.0, "temperature": 1.0}
            return run.posterior
        if described is self.main and options.sweeping:
            from ...evaluation.sweep import sweep_posterior

            sweep = sweep_posterior(
                run.model, run.tokenizer, run.posterior, self._formatted(run, self.select_split.examples),
                self._formatted(run, self.loaded[self.tasks[0]].examples), fractions=options.prune_fractions,
                temperatures=options.temperatures, prune_options=self.prune_options(), select_by=options.select_by,
                num_samples=self.num_samples, max_length=self._max_length(run), ece_bins=self.ece_bins,
                ece_edges=self.preset.ece_edges, batch_size=options.batch_size, seed=options.seed,
            )  # fmt: skip
            self.result["sweep"] = sweep
            chosen = sweep["configs"][sweep["chosen"]]
            fraction, temperature = chosen["fraction"], chosen["temperature"]
        else:
            fraction, temperature = options.prune_fractions[0], options.temperatures[0]
        self.pruning = {"fraction": fraction, "temperature": temperature, **self.prune_options()}
        return run.posterior.at_test_time(fraction, temperature, **self.prune_options())

    @staticmethod
    def _max_length(run):
        # An SFT run's recipe has no prompt max_length (its SFTConfig max_length is the sequence's): none then.
        return getattr(run.recipe.data, "max_length", None) if run.recipe else None

    @staticmethod
    def _formatted(run, examples):
        from ...choice import format_examples

        # The prompts as this run's model was trained on them (chat template or plain, answer spelling).
        return format_examples(examples, tokenizer=run.tokenizer, model_args=run.model_args)

    def evaluate(self, described: dict, run, posterior) -> None:
        from ...choice.collator import count_truncated
        from ...rundir import optimizer_name

        options, preset = self.options, self.preset
        if described.get("member"):  # scored at its weights only; combined in `finish`
            for task, part in self.loaded.items():
                logger.info("ensemble member %s: %s %s", described["dir"], task, self.split)
                self.member_predictions[task].append(self._predict(run, part.examples, num_samples=0))
            if options.temperature_scaling:
                self.held_out.setdefault("ensemble", []).append(
                    self._predict(run, self.select_split.examples, num_samples=0)
                )
            return
        samples_of = "posterior" if posterior is not None else "mc_dropout"
        num_samples = self.num_samples if posterior is not None else options.mc_dropout_samples
        label = described["label"]
        self.runs[label] = {
            "dir": described["dir"], "optimizer": optimizer_name(run.recipe) if run.recipe else None,
            "samples": samples_of if num_samples else None, "num_samples": num_samples,
            **self.run_record(run, posterior, **self.pruning),
        }  # fmt: skip
        batched = {"samples_per_pass": options.batched_samples} if options.batched_samples else {}
        for task, part in self.loaded.items():
            logger.info("%s: %s %s (%d examples)", label, task, self.split, len(part.examples))
            predictions = self._predict(run, part.examples, posterior=posterior, num_samples=num_samples,
                                        sample_kind=samples_of, **batched)  # fmt: skip
            self.predictions[task][label] = predictions
            entry = self.result["tasks"][task]
            entry.setdefault("runs", {})[label] = predictions.metrics(self.ece_bins, ece_edges=preset.ece_edges)
            # Prompts cut to the run's max_length (their middle): per run, as chat templates differ in length.
            entry.setdefault("truncated", {})[label] = count_truncated(
                run.tokenizer,
                self._formatted(run, part.examples),
                self._max_length(run),
                f"{label}: {task} {self.split}",
            )
        if options.risk_averse and posterior is not None and num_samples:
            from ...evaluation.risk_averse import risk_averse_report

            # The same run's samples on the selection split choose kappa, applied to the first task's samples.
            selection = self._predict(run, self.select_split.examples, posterior=posterior, num_samples=num_samples,
                                      **batched)  # fmt: skip
            self.result["tasks"][self.tasks[0]]["runs"][label]["risk_averse"] = risk_averse_report(
                selection, self.predictions[self.tasks[0]][label], options.select_split
            )
        if options.temperature_scaling:
            self.held_out[label] = self._predict(run, self.select_split.examples, posterior=posterior, num_samples=0)

    def finish(self) -> None:
        from ...evaluation.baselines import ensemble, fit_temperature, scaled_probs, temperature_scaled

        members = [d for d in self.described if d.get("member")]
        edges = self.preset.ece_edges
        if members:
            self.runs["ensemble"] = {"dirs": [m["dir"] for m in members], "samples": "ensemble",
                                     "num_samples": len(members)}  # fmt: skip
            for task in self.tasks:
                self.predictions[task]["ensemble"] = ensemble(self.member_predictions[task])
                self.result["tasks"][task]["runs"]["ensemble"] = self.predictions[task]["ensemble"].metrics(
                    self.ece_bins, ece_edges=edges)  # fmt: skip
            if self.options.temperature_scaling:
                self.held_out["ensemble"] = ensemble(self.held_out["ensemble"])
        for label, selection in self.held_out.items():
            task = self.tasks[0]
            temperature = fit_temperature(scaled_probs(selection), selection.gold)
            scaled = f"{label} + TS"
            self.predictions[task][scaled] = temperature_scaled(self.predictions[task][label], temperature)
            metrics = self.predictions[task][scaled].metrics(self.ece_bins, ece_edges=edges)
            self.result["tasks"][task]["runs"][scaled] = metrics
            self.runs[scaled] = {"temperature_scaling": {"temperature": temperature,
                                                         "fitted_on": self.options.select_split, "of": label,
                                                         "criterion": "nll"}}  # fmt: skip

    def summary(self) -> dict:
        return {**self.result, "runs": self.runs}

    def protocol(self) -> dict:
        from ...evaluation.predict import protocol

        options = self.options
        return {
            **protocol(self.preset, self.num_samples, self.ece_bins, self.answer_scoring),
            "risk_averse": (f"kappa of mean - kappa * std chosen by AURC on {options.select_split!r} per posterior run"
                            if options.risk_averse else None),
            "selection": (f"{options.select_by} of the sampled predictive on {options.select_split!r}"
                          if options.sweeping else None),
            "temperature_scaling": (f"one temperature per run fitted by NLL on {options.select_split!r} (at the "
                                    "weights; an ensemble's averaged predictive), applied to the reported split"
                                    if options.temperature_scaling else None),
            **({"batched_samples": f"{options.batched_samples} posterior samples per forward pass (one LoRA delta "
                                   "per sample on a stacked batch)"} if options.batched_samples else {}),
        }  # fmt: skip

    def write_files(self, staging: str, result: dict) -> None:
        from ...filenames import TRADEOFF_PLOT_NAME
        from ...evaluation.metrics import headline_metric
        from ...evaluation.plots import plot_tradeoff
        from ...evaluation.report import write_task_files

        preset = self.preset
        for task in self.tasks:
            result["tasks"][task]["files"] = write_task_files(
                staging, task, self.predictions[task], result["tasks"][task]["runs"], preset.ece_bins, preset.ece_edges
            )
        if self.options.sweeping:
            plot_tradeoff(result["sweep"], os.path.join(staging, TRADEOFF_PLOT_NAME), headline_metric(preset))

    def tables(self, result: dict) -> tuple[str, str]:
        from ...evaluation.report import markdown_table, report_notes, sweep_table
        from ...evaluation.risk_averse import risk_averse_lines

        table = markdown_table(result["tasks"], self.ece_bins)
        sweep = f"\n{sweep_table(result['sweep'], self.ece_bins)}\n" if self.options.sweeping else ""
        risk_averse = "".join(line + "\n" for line in risk_averse_lines(result["tasks"]))
        return table, table + sweep + "\n" + report_notes(self.preset, result["tasks"]) + risk_averse


def _common_answer_scoring(described_runs) -> str:
    """The answer scoring (letter / text / text_norm) of the runs compared side by side: one for all, checked before
    any model loads (a run without a recipe scores letters)."""
    from ...errors import UsageError

    scorings = {d["dir"]: (getattr(d["recipe"].model, "answer_scoring", "letter") if d["recipe"] else "letter")
                for d in described_runs}  # fmt: skip
    if len(set(scorings.values())) > 1:
        raise UsageError("The runs compared score their answers differently (answer_scoring: "
                         + ", ".join(f"{run}: {scoring}" for run, scoring in scorings.items())
                         + "): evaluate each in its own call")  # fmt: skip
    return next(iter(scorings.values()))
