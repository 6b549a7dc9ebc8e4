"""The MPE's per-example sensitivity of the multiple-choice objective: its output is the K answer logits."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..sensitivity import DEFAULT_SAMPLES, VARIANCE_ESTIMATORS, Sensitivity, exact_variances, sampled_variances
from ..vocabulary import OUTPUT_COVARIANCES
from .collator import length_sorted_batches
from .example import require_labelled
from .logits import choice_logits


def _choice_outputs(model, batch):
    return choice_logits(model, batch)


def batches_sensitivity(model, posterior, batches, ids, variance: str = "exact", num_samples: int = DEFAULT_SAMPLES,
                        seed: int = 0, progress: bool = False, covariance: str = "full") -> Sensitivity:  # fmt: skip
    """`Sensitivity` of the examples in collated multiple-choice `batches` (ChoiceCollator's), `ids` in batch order.

    The adapter is set to the posterior mean (and stays there); the model is scored in eval mode (dropout off)
    and its training mode restored after.
    """
    if variance not in VARIANCE_ESTIMATORS:
        raise ValueError(f"Invalid variance value: {variance!r} (must be one of {', '.join(VARIANCE_ESTIMATORS)})")
    if covariance not in OUTPUT_COVARIANCES:
        raise ValueError(f"Invalid covariance value: {covariance!r} (must be one of {', '.join(OUTPUT_COVARIANCES)})")
    full = covariance == "full"
    posterior.apply_mean(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    passes = len(batches) * (1 + (num_samples if variance == "sampled" else 0))
    bar = tqdm(total=passes, desc=f"sensitivity ({variance})", unit="batch", leave=False, disable=not progress)
    try:
        with torch.no_grad():
            logits = []
            for batch in batches:
                bar.update()
                logits.append(_choice_outputs(model, {k: v.to(device) for k, v in batch.items()}).double().cpu())
            width = max(chunk.shape[1] for chunk in logits)
            logits = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=float("-inf"))
                                for c in logits])  # fmt: skip
        if variance == "exact":
            variances = exact_variances(model, posterior, batches, _choice_outputs, full=full)
        else:
            variances = sampled_variances(model, posterior, batches, _choice_outputs, num_samples, seed, progress=bar,
                                          full=full)  # fmt: skip
    finally:
        model.train(was_training)
        bar.close()
    gold = torch.cat([batch["labels"] for batch in batches])
    settings = {"variance": variance, "covariance": covariance, "samples": num_samples if variance == "sampled" else None,
                "seed": seed if variance == "sampled" else None, "ess": posterior.config.get("ess"),
                "temperature": posterior.config.get("temperature", 1.0)}  # fmt: skip
    return Sensitivity(list(ids), gold, logits, variances, settings)


def choice_sensitivity(model, tokenizer, examples, posterior, variance: str = "exact",
                       num_samples: int = DEFAULT_SAMPLES, batch_size: int = 16, max_length: int | None = None,
                       seed: int = 0, progress: bool = False, covariance: str = "full") -> Sensitivity:  # fmt: skip
    """`Sensitivity` of `examples` (formatted `ChoiceExample`s with labels), in their order.

    Batched by prompt length as in evaluation; `variance` "exact" (K backward passes per batch) or "sampled"
    (`num_samples` posterior samples); `covariance` "full" (K x K) or "diagonal".
    """
    require_labelled(examples, "the sensitivity")
    batches, order = length_sorted_batches(tokenizer, examples, batch_size, max_length)
    result = batches_sensitivity(model, posterior, batches, [examples[i].id for i in order], variance, num_samples,
                                 seed, progress, covariance)  # fmt: skip
    unsort = torch.empty(len(order), dtype=torch.long)
    unsort[torch.tensor(order)] = torch.arange(len(order))
    return Sensitivity([e.id for e in examples], result.gold[unsort], result.logits[unsort], result.variance[unsort],
                       result.settings)  # fmt: skip
