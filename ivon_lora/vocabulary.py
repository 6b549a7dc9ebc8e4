"""The words that configs, parsers and the code behind them share: ECE bin counts, pruning scopes,
modes, criteria and fractions, sweep selection criteria, sample kinds, answer scorings, decoding modes, merge
methods and spaces, curvature methods.

A leaf (it imports nothing from the package), so that `config` and `rundir` validate a value without importing the
evaluation or trainer code that acts on it; that code imports its vocabulary from here too, so there is one list.
"""

from __future__ import annotations

# ECE bin counts reported when none are given (the IVON-LoRA protocol's 10 and BLoB's 15).
DEFAULT_ECE_BINS = (10, 15)

# How `ivon-lora refine` (`ivon_lora.curvature`) measures the curvature at the mean: the exact diagonal GGN, the
# Fisher with labels drawn from the model, IVON's own (Price) estimator.
CURVATURE_METHODS = ("ggn", "fisher", "ivon")
DEFAULT_CURVATURE_SAMPLES = 8  # fisher: labels drawn per example; ivon: antithetic sample pairs per batch
# The prediction covariance V = J Σ Jᵀ the sensitivity reads: the K x K matrix (the MPE's form), or its diagonal.
OUTPUT_COVARIANCES = ("full", "diagonal")

# Test-time pruning of the posterior (`Posterior.prune`): what entries are ranked within, what pruning does to an
# entry, and the score it ranks by (|m|/sqrt(v), |m|, 1/sqrt(v)).
PRUNE_SCOPES = ("global", "matrix")
PRUNE_MODES = ("zero", "denoise")
PRUNE_CRITERIA = ("snr", "magnitude", "variance")
# The fractions `eval --sweep` tries.
DEFAULT_PRUNE_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)

# What a sweep chooses by: the built-in metrics that `calibration_metrics` computes, in the metric registry's order,
# as (name, higher is better, one column per ECE bin count). `evaluation.sweep.selection_criteria` reads the registry
# itself; a test holds the two equal for the built-in metrics.
SELECTION_METRICS = (("accuracy", True, False), ("nll", False, False), ("ece", False, True), ("brier", False, False))
DEFAULT_SELECTION_CRITERION = "nll"

# Where the S sampled predictions come from: multiple-choice evaluation samples the posterior or dropout masks;
# generative evaluation also samples answers at a temperature (runs with neither posterior nor dropout).
CHOICE_SAMPLE_KINDS = ("posterior", "mc_dropout")
GENERATIVE_SAMPLE_KINDS = ("posterior", "mc_dropout", "temperature")
# How a multiple-choice answer is scored (`answer_scoring:` of a recipe) -> what the report's protocol says of it.
ANSWER_SCORINGS = {
    "letter": "last-position logits of the answer tokens, K-way softmax",
    "text": "summed log-probability of each answer text after the prompt (lm-eval acc), K-way softmax",
    "text_norm": "summed log-probability of each answer text after the prompt divided by the text's length in "
                 "characters, leading whitespace excluded (lm-eval acc_norm), K-way softmax",
}  # fmt: skip
# How a generative task's chosen answer is decoded: greedy at the posterior mean, or posterior-averaged.
DECODING_MODES = ("mean", "averaged")
# How `ivon-lora merge` combines run dirs: by their posteriors (`ivon_lora.merging.runs`), or by one of PEFT's
# combination types (peft.tuners.lora.LoraModel.add_weighted_adapter, peft 0.21); and the space the posterior methods
# merge in (each ΔW = B·A, or A and B separately).
MERGE_POSTERIOR_METHODS = ("uncertainty", "posterior")  # they need each run's posterior
MERGE_PEFT_TYPES = ("linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                    "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")  # fmt: skip
MERGE_METHODS = (*MERGE_POSTERIOR_METHODS, *MERGE_PEFT_TYPES)
MERGE_SPACES = ("delta", "factor")


def selection_criteria(ece_bins=DEFAULT_ECE_BINS) -> dict[str, bool]:
    """What a sweep can choose by, criterion -> whether larger is better, over `ece_bins` and the default bin counts."""
    bins = sorted(set(ece_bins) | set(DEFAULT_ECE_BINS))
    return {
        column: higher_is_better
        for name, higher_is_better, per_bins in SELECTION_METRICS
        for column in ([f"{name}_{b}" for b in bins] if per_bins else [name])
    }
