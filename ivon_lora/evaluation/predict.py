"""Choice probabilities of a model over a list of examples, at the posterior mean and over posterior samples."""

from __future__ import annotations

import logging

import torch

from ..objective import ChoiceCollator, ChoiceExample, choice_logits
from .metrics import DEFAULT_ECE_BINS, calibration_metrics

logger = logging.getLogger(__name__)


def protocol(num_samples: int, ece_bins) -> dict:
    """How the numbers of `evaluate_predictive` were made, for every result file."""
    return {
        "scoring": "last-position logits of the answer tokens, K-way softmax",
        "predictive": "mean of S sample probability vectors",
        "num_samples": num_samples,
        "ece": "equal-width bins on the max probability, (lo, hi]",
        "ece_bins": list(ece_bins),
        "brier": "sum over classes",
        "units": "fractions (x100 for papers' tables)",
    }


@torch.no_grad()
def predict_probs(model, batches) -> torch.Tensor:
    """N x K_max float64 probabilities of pre-collated batches, in order (padding choices get probability 0)."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(torch.softmax(choice_logits(model, batch).double(), dim=-1).cpu())
    num_choices = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, num_choices - c.shape[1])) for c in chunks])


def evaluate_predictive(
    model,
    tokenizer,
    examples: list[ChoiceExample],
    posterior=None,
    num_samples: int = 10,
    batch_size: int = 16,
    max_length: int | None = None,
    seed: int = 0,
    ece_bins=DEFAULT_ECE_BINS,
) -> dict:
    """Metrics at the posterior mean ("mean") and of the average of 1..S sampled predictive distributions.

    The predictive with s samples is the mean of the first s sampled probability vectors (not of logits). Every
    example is scored (no drop_last); batches are tokenized once and reused for every sample.
    """
    if any(e.gold < 0 for e in examples):
        raise ValueError("Every evaluation example needs a gold label")
    if posterior is not None:
        posterior.apply_mean(model)  # "mean" is the posterior's mean, e.g. after pruning
    collator = ChoiceCollator(tokenizer, max_length)
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples]
    batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    gold = torch.tensor([e.gold for e in examples])

    result = {"num_examples": len(examples), "mean": calibration_metrics(predict_probs(model, batches), gold, ece_bins)}
    if posterior is None or num_samples == 0:
        return result
    generator = torch.Generator().manual_seed(seed)
    running = None
    per_sample_count = []
    for s in range(1, num_samples + 1):
        with posterior.sample(model, generator=generator):
            probs = predict_probs(model, batches)
        running = probs if running is None else running + probs
        per_sample_count.append({"samples": s, **calibration_metrics(running / s, gold, ece_bins)})
        logger.info("posterior sample %d/%d: accuracy %.4f", s, num_samples, per_sample_count[-1]["accuracy"])
    result["sampled"] = per_sample_count[-1]
    result["by_num_samples"] = per_sample_count
    return result
