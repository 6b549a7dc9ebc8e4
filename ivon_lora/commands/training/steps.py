"""`TrainSteps`: what an objective provides to `commands/train.py`'s one pipeline, and the model card's footer every
objective's steps end with. A module of its own so that each objective's steps (choice.py, sft.py) import it without
going through the package, which imports them to provide them to their objectives."""

from __future__ import annotations


class TrainSteps:
    """What differs between objectives in `ivon-lora train`, in the order the pipeline calls it.

    `load_data()` before the tokenizer (a bad record fails before anything loads), `prepare(tokenizer)` (formatting
    and checks that need the tokenizer, before the model loads), `trainer_inputs()` (the Trainer's datasets, collator,
    metrics), then after training `score(trainer, model, posterior, num_samples)` (the report's objective-specific
    head, protocol, data and metrics, from the saved artifact), `diagnostics(posterior)`, and on the main process
    `write(final_dir)` and `log_metrics()`. `card_lines(metrics, has_posterior)` renders its metrics.json for the
    model card of `ivon-lora export`.
    """

    def __init__(self, recipe):
        self.recipe = recipe

    def load_data(self) -> None:
        raise NotImplementedError

    def prepare(self, tokenizer) -> None:
        raise NotImplementedError

    def trainer_inputs(self) -> dict:
        raise NotImplementedError

    def score(self, trainer, model, posterior, num_samples: int) -> dict:
        """{report head keys..., "protocol", "data", "metrics"} in report order."""
        raise NotImplementedError

    def diagnostics(self, posterior) -> tuple[dict, dict]:
        """(the full diagnostics written to the run dir, their summary in metrics.json)."""
        raise NotImplementedError

    def describe_run(self) -> str:
        """What the diagnostics' title names (the data and the run dir)."""
        raise NotImplementedError

    def write(self, final_dir: str) -> None:
        """Files besides metrics.json (main process only)."""

    def log_metrics(self) -> None:
        raise NotImplementedError

    @staticmethod
    def card_lines(metrics: dict, has_posterior: bool) -> list[str]:
        raise NotImplementedError


def metrics_footer(metrics: dict) -> list[str]:
    """The model card's protocol and environment lines of a run's metrics.json."""
    from ...rundir import environment_text

    return ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in metrics["protocol"].items()) + ".",
            "", "Measured with " + environment_text(metrics["environment"]) + "."]  # fmt: skip
