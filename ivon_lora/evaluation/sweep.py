"""Test-time posterior sweeps: pruning fractions x temperatures, chosen on one split and reported on another."""

from __future__ import annotations

import itertools
import logging

from ..vocabulary import DEFAULT_PRUNE_FRACTIONS
from .metrics import DEFAULT_ECE_BINS, computed_columns
from .predict import evaluate_predictive

logger = logging.getLogger(__name__)


def selection_criteria(ece_bins=DEFAULT_ECE_BINS) -> dict[str, bool]:
    """What a sweep can choose by (criterion -> whether larger is better): every computed registered metric."""
    return computed_columns(sorted(set(ece_bins) | set(DEFAULT_ECE_BINS)))


def predictive_metrics(result: dict) -> dict:
    """The metrics a configuration is judged by: the sampled predictive if there is one, else the mean."""
    return result.get("sampled", result["mean"])


def sweep_posterior(
    model,
    tokenizer,
    posterior,
    select_examples,
    report_examples,
    fractions=DEFAULT_PRUNE_FRACTIONS,
    temperatures=(1.0,),
    prune_options: dict | None = None,
    select_by: str = "nll",
    **evaluate_options,
) -> dict:
    """Evaluate every (fraction, temperature) on both splits; choose on the selection split only.

    Returns {"configs": [{fraction, temperature, select: metrics, report: metrics}], "chosen": index,
    "select_by": criterion}. The model's adapter holds the unchanged posterior mean afterwards.
    """
    criteria = selection_criteria(evaluate_options.get("ece_bins", DEFAULT_ECE_BINS))
    if select_by not in criteria:
        raise ValueError(f"Invalid select_by value: {select_by!r} (must be one of {', '.join(criteria)})")
    prune_options = prune_options or {}
    configs = []
    try:
        for fraction, temperature in itertools.product(fractions, temperatures):
            candidate = posterior.at_test_time(fraction, temperature, **prune_options)
            scores = {
                role: evaluate_predictive(model, tokenizer, examples, posterior=candidate, **evaluate_options)
                for role, examples in (("select", select_examples), ("report", report_examples))
            }
            configs.append({"fraction": fraction, "temperature": temperature, **scores})
            logger.info(
                "fraction %.3f temperature %g: select %s %.4f", fraction, temperature, select_by,
                predictive_metrics(scores["select"])[select_by],
            )  # fmt: skip
    finally:
        posterior.apply_mean(model)
    values = [predictive_metrics(c["select"])[select_by] for c in configs]
    best = max(values) if criteria[select_by] else min(values)
    return {"configs": configs, "chosen": values.index(best), "select_by": select_by}
