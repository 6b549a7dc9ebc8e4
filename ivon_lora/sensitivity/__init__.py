"""Per-example sensitivity from the posterior: the Memory-Perturbation Equation (see `core`), objective-agnostic.

Each objective applies it to its own outputs: `ivon_lora.choice.sensitivity` (`choice_sensitivity`, what a Trainer
script calls and `ivon-lora sensitivity` runs; `batches_sensitivity` on pre-collated batches) and
`ivon_lora.sft.sensitivity` (the sequence-level version for the SFT objective).
"""

from __future__ import annotations

from .core import VARIANCE_ESTIMATORS, Sensitivity, mpe_loo_outputs
from .variance import exact_variances, sampled_variances

__all__ = ["VARIANCE_ESTIMATORS", "Sensitivity", "mpe_loo_outputs", "rescaled_to_ess", "exact_variances",
           "sampled_variances"]  # fmt: skip

DEFAULT_SAMPLES = 10


def rescaled_to_ess(posterior, ess: float | None):
    """The posterior with precision ess·(h + δ) instead of the run's ess·(h + δ) (variance x ess_run / ess).

    IVON's ess is a width setting (1e6 in the recipes) rather than the train set's size N; the MPE's
    leave-one-out shift is calibrated for the Bayesian posterior of N examples, so `ess=N` gives LOO estimates
    of the right size. Rankings (sensitivity, variance) do not depend on it. None: the posterior as it is.
    """
    if ess is None:
        return posterior
    run_ess = posterior.config.get("ess")
    if not run_ess:
        raise ValueError("The posterior records no single ess (one per parameter group): it cannot be rescaled")
    return posterior.with_temperature(ess / run_ess)
