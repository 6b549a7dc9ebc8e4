"""The curvature of the multiple-choice objective at the posterior mean (`ivon_lora.curvature` on its K answer
logits and its training loss, the cross-entropy over them)."""

from __future__ import annotations

import torch.nn.functional as F
from tqdm.auto import tqdm

from ..curvature import delta_fisher, diagonal_fisher, price_hessian
from ..vocabulary import CURVATURE_METHODS, DEFAULT_CURVATURE_SAMPLES
from .collator import length_sorted_batches
from .example import require_labelled
from .logits import choice_logits


def _choice_loss(model, batch):
    return F.cross_entropy(choice_logits(model, batch).float(), batch["labels"])


def choice_curvature(model, tokenizer, examples, posterior, method: str = "ggn", samples: int = DEFAULT_CURVATURE_SAMPLES,
                     batch_size: int = 16, max_length: int | None = None, seed: int = 0,
                     progress: bool = False) -> dict:  # fmt: skip
    """The diagonal curvature per adapter entry at the posterior mean over `examples` (formatted, labelled
    `ChoiceExample`s), on the scale of IVON's h (per example): `ggn` exact, `fisher` with `samples` labels drawn
    from the model per example, `ivon` IVON's Price estimator with `samples` antithetic pairs per batch. The model's
    adapter is left as it was."""
    if method not in CURVATURE_METHODS:
        raise ValueError(f"Invalid method value: {method!r} (must be one of {', '.join(CURVATURE_METHODS)})")
    require_labelled(examples, "the curvature of the training loss")
    batches, _ = length_sorted_batches(tokenizer, examples, batch_size, max_length)
    with tqdm(total=len(batches), desc=f"curvature ({method})", unit="batch", leave=False, disable=not progress) as bar:
        with posterior.holding_mean(model):
            if method == "ivon":
                return price_hessian(model, posterior, batches, _choice_loss, samples, seed, progress=bar)
            return diagonal_fisher(model, posterior, batches, choice_logits, None if method == "ggn" else samples,
                                   seed, progress=bar)  # fmt: skip


def choice_delta_fisher(model, tokenizer, examples, posterior, batch_size: int = 16, max_length: int | None = None,
                        progress: bool = False) -> dict:  # fmt: skip
    """The exact diagonal Fisher of each LoRA update ΔW over `examples` at the posterior mean (`delta_fisher`)."""
    batches, _ = length_sorted_batches(tokenizer, examples, batch_size, max_length)
    with tqdm(total=len(batches), desc="curvature (ΔW)", unit="batch", leave=False, disable=not progress) as bar:
        with posterior.holding_mean(model):
            return delta_fisher(model, posterior, batches, choice_logits, progress=bar)
