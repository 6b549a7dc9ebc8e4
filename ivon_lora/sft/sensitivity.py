"""The sequence-level MPE for the SFT objective: one output per document, its summed target log-probability.

Choices (the K-way version does not apply: the output is a V-way softmax per token, V ~ 50k):

* output F_i = Σ_t log p(y_t | ...) over document i's target tokens (`likelihood.sequence_log_likelihoods`);
* its variance v_i = Var_θ[F_i] = J_i Σ J_iᵀ, exact (one backward pass per batch, the hooks of `variance`) or
  sampled over S posterior samples;
* the document's loss -F_i is linear in F_i, so its error is the constant -1 and its output Hessian 0: the MPE's
  leave-one-out output is F_i - v_i (the document becomes less likely by its variance), the sensitivity is the
  movement of its log-probability, s_i = v_i, and the LOO-NLL per target token is Σ_i (v_i - F_i) / Σ_i T_i.

So at the sequence level the sensitivity is the prediction variance alone: it ranks the documents the posterior is
least sure of, not those it fits worst (loss, F_i / T_i, is reported beside it). Padded batches only (one document
per row): the hooks' per-row gradients are per-document gradients there, not in packed rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sensitivity import VARIANCE_ESTIMATORS, exact_variances, sampled_variances
from .likelihood import sequence_log_likelihoods


def _document_log_likelihoods(model, batch) -> torch.Tensor:
    """B x 1 summed target log-probabilities, with grad (the evaluation's function without its no_grad)."""
    sums, _ = sequence_log_likelihoods.__wrapped__(model, batch)
    return sums.unsqueeze(1)


@dataclass
class SequenceSensitivity:
    """Per-document sequence-level MPE quantities (see the module doc)."""

    log_likelihood: torch.Tensor  # F_i [D]
    token_count: torch.Tensor  # T_i [D]
    variance: torch.Tensor  # v_i [D]
    settings: dict = field(default_factory=dict)

    @property
    def sensitivity(self) -> torch.Tensor:
        return self.variance

    @property
    def loo_log_likelihood(self) -> torch.Tensor:
        return self.log_likelihood - self.variance

    @property
    def loss(self) -> torch.Tensor:
        """Per-token NLL of each document at the posterior mean."""
        return -self.log_likelihood / self.token_count.clamp(min=1)

    def loo_nll(self) -> float:
        """Σ_i (v_i - F_i) / Σ_i T_i: the LOO-NLL per target token."""
        return float(-self.loo_log_likelihood.sum() / self.token_count.sum().clamp(min=1))


def sft_sensitivity(model, posterior, batches, variance: str = "exact", num_samples: int = 10,
                    seed: int = 0) -> SequenceSensitivity:  # fmt: skip
    """`SequenceSensitivity` of the documents of padded SFT `batches` (input_ids, attention_mask, labels), in order."""
    if variance not in VARIANCE_ESTIMATORS:
        raise ValueError(f"Invalid variance value: {variance!r} (must be one of {', '.join(VARIANCE_ESTIMATORS)})")
    if any("attention_mask" not in batch for batch in batches):
        raise ValueError("Sequence-level sensitivity needs padded batches (one document per row, an attention_mask)")
    posterior.apply_mean(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        sums, counts = [], []
        for batch in batches:
            total, count = sequence_log_likelihoods(model, {k: v.to(device) for k, v in batch.items()})
            sums.append(total.cpu())
            counts.append(count.cpu())
        if variance == "exact":
            variances = exact_variances(model, posterior, batches, _document_log_likelihoods)
        else:
            variances = sampled_variances(model, posterior, batches, _document_log_likelihoods, num_samples, seed)
    finally:
        model.train(was_training)
    settings = {"variance": variance, "samples": num_samples if variance == "sampled" else None,
                "output": "summed target-token log-probability per document"}  # fmt: skip
    return SequenceSensitivity(torch.cat(sums), torch.cat(counts), variances[:, 0], settings)
