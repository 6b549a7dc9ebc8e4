"""`--lm-eval-tasks`: lm-eval multiple-choice tasks -> the toolkit's calibration report.

Each run is scored by lm-eval (through the `ivon-lora` backend, `ivon_lora.integrations.lm_eval`, samples logged)
at its posterior mean and, for an IVON run, with S posterior samples; a baseline run without a posterior at its
weights. The logged choice log-likelihoods become probabilities (`ivon_lora.evaluation.logged_choices`: the softmax
behind lm-eval's `acc`) and go through the toolkit's metric registry and report writers: eval.json, eval.md,
predictions-TASK-RUN.jsonl, reliability-TASK.png and selective-TASK.png, as for the toolkit's own tasks.
"""

from __future__ import annotations

import logging

from .base import Runner, flag, register_runner

logger = logging.getLogger(__name__)


@register_runner
class LMEvalRunner(Runner):
    name = "lm_eval"
    description = "--lm-eval-tasks"
    # The backend prunes with the posterior's default scope, mode and criterion (its model_arg prune= is a fraction).
    accepts = frozenset({"lm_eval_tasks", "lm_eval_include_path", "protocol", "ece_bins", "prune_fractions",
                         "temperatures"})  # fmt: skip

    @classmethod
    def applies(cls, options, recipe) -> bool:
        return bool(options.lm_eval_tasks)

    def refusal(self, option: str, accepted_by: list[str]) -> str:
        if option.startswith("prune_"):
            return (f"{flag(option)} does not apply to --lm-eval-tasks: the lm-eval backend prunes with its default "
                    f"{flag(option)}; drop it")  # fmt: skip
        return (f"{flag(option)} does not apply to --lm-eval-tasks (lm-eval's task config chooses the data; runs are "
                "scored at the mean and with posterior samples)")  # fmt: skip

    def resolve(self) -> str:
        from ...errors import UsageError
        from ...tasks import get_protocol

        options, recipe = self.options, self.recipe
        self.preset = get_protocol(options.protocol or (recipe.run.protocol if recipe else "ivon-lora"))
        self.num_samples = self.preset.num_samples if options.samples is None else options.samples
        self.ece_bins = sorted(set(options.ece_bins) | {self.preset.ece_bins})
        self.fraction, self.temperature = options.prune_fractions[0], options.temperatures[0]
        if not self.main["has_posterior"] and (self.fraction or self.temperature != 1.0):
            raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
        return "eval-lm-eval"

    def load_data(self) -> None:
        from ...integrations.lm_eval import IVONLoRALM  # noqa: F401  (first: names the extra if lm-eval is missing)
        from ...integrations.lm_eval_report import task_manager

        self.manager = task_manager(self.options.lm_eval_tasks, self.options.lm_eval_include_path)
        self.logged = {task: {} for task in self.options.lm_eval_tasks}  # task -> run -> predictive -> LoggedChoices
        self.runs, self.lm_eval_outputs = {}, {}

    def posterior_for(self, described: dict, run):
        return run.posterior  # the backend builds the test-time posterior from prune= and temperature=

    def evaluate(self, described: dict, run, posterior) -> None:
        from ...integrations.lm_eval_report import score_with_lm_eval

        label, options = described["label"], self.options
        sampled = self.num_samples if posterior is not None else 0
        self.runs[label] = {
            "dir": described["dir"],
            "samples": "posterior" if sampled else None,
            "num_samples": sampled,
            **self.run_record(run, posterior, self.fraction, self.temperature),
        }
        test_time = {"prune": self.fraction, "temperature": self.temperature} if posterior is not None else {}
        for predictive, samples in (("mean", 0), ("sampled", sampled)):
            if predictive == "sampled" and not samples:
                continue
            logger.info("%s: lm-eval %s, %s", label, ",".join(options.lm_eval_tasks),
                        "mean" if not samples else f"{samples} samples")  # fmt: skip
            logged, kept = score_with_lm_eval(run, options.lm_eval_tasks, self.manager, samples=samples,
                                              seed=options.seed, batch_size=options.batch_size, limit=options.limit,
                                              **test_time)  # fmt: skip
            for task, choices in logged.items():
                self.logged[task].setdefault(label, {})[predictive] = choices
            self.lm_eval_outputs.setdefault(label, {})[predictive] = kept

    def summary(self) -> dict:
        from ...integrations.lm_eval_report import task_entries

        self.entries, self.rows_by_task = task_entries(self.logged, self.lm_eval_outputs, self.runs, self.main["label"],
                                                       self.ece_bins, self.preset.ece_edges)  # fmt: skip
        return {"tasks": self.entries, "runs": self.runs, "lm_eval": self.lm_eval_outputs}

    def protocol(self) -> dict:
        from ...evaluation.predict import protocol
        from ...integrations.lm_eval_report import SCORE

        return {
            **protocol(self.preset, self.num_samples, self.ece_bins),
            "scoring": "lm-eval's prompts and choices; log-likelihood of each choice's continuation",
            "probabilities": SCORE,
            "predictive": "posterior mean weights; and log (1/S) sum_s p_s(choice | prompt) per choice (sequence "
                          "probabilities averaged over S samples), normalised over the choices",
            "seed": self.options.seed,
            "limit": self.options.limit,
        }  # fmt: skip

    def environment(self) -> dict:
        from importlib.metadata import version

        return {**super().environment(), "lm-eval": version("lm-eval")}

    def write_files(self, staging: str, result: dict) -> None:
        from ...integrations.lm_eval_report import write_lm_eval_task_files

        for task, entry in result["tasks"].items():
            entry["files"] = write_lm_eval_task_files(staging, task, entry, self.logged[task], self.rows_by_task[task],
                                                      self.preset)  # fmt: skip

    def tables(self, result: dict) -> tuple[str, str]:
        from ...evaluation.report import markdown_table

        table = markdown_table(result["tasks"], self.ece_bins)
        return table, table
