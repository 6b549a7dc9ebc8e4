"""The disagreement of S samples' distributions over a vocabulary (pure torch, no package import): the mutual
information and the expected pairwise KL, read by the posterior-averaged decoder (`generation.decoding`) at every
step and by the confidence scores (`evaluation.uncertainty`) along an answer. MI = H(mean_s p_s) - mean_s H(p_s);
EPKL = mean over ordered pairs s != t of KL(p_s || p_t) (Malinin & Gales: EPKL >= MI)."""

from __future__ import annotations

import math

import torch

# How far a log-prob distribution may be from summing to one before it is refused (float32 log_softmax is ~1e-6).
_NORMALISATION_TOLERANCE = 1e-3


def _sample_distributions(log_probs) -> torch.Tensor:
    log_probs = torch.as_tensor(log_probs).double()
    if log_probs.ndim < 2 or log_probs.shape[-2] < 2:
        raise ValueError(f"Expected log-probs [..., S, V] of at least 2 posterior samples, got "
                         f"{tuple(log_probs.shape)}")  # fmt: skip
    total = torch.logsumexp(log_probs, dim=-1)
    if (total.abs() > _NORMALISATION_TOLERANCE).any():
        raise ValueError(
            "Each sample's log-probs must sum to one over the last dimension: pass a log_softmax over the vocabulary, "
            "or with_remaining_mass(...) of the log-probs on a top-k support"
        )
    return log_probs


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    # 0 log 0 = 0: a token outside a distribution's support adds nothing.
    return -torch.where(torch.isneginf(log_p), 0.0, log_p.exp() * log_p).sum(-1)


def mutual_information(log_probs) -> torch.Tensor:
    """H(mean_s p_s) - mean_s H(p_s) of the S samples' distributions over V; [..., S, V] -> [...] (nats)."""
    log_probs = _sample_distributions(log_probs)
    log_mean = torch.logsumexp(log_probs, dim=-2) - math.log(log_probs.shape[-2])
    return _entropy(log_mean) - _entropy(log_probs).mean(-1)


def expected_pairwise_kl(log_probs) -> torch.Tensor:
    """Mean over ordered pairs s != t of KL(p_s || p_t); [..., S, V] -> [...] (nats)."""
    log_probs = _sample_distributions(log_probs)
    num_samples = log_probs.shape[-2]
    probs = log_probs.exp()
    # sum_{s,t} KL(p_s || p_t) = S sum_s sum_v p_s log p_s - sum_v (sum_s p_s)(sum_t log p_t); the s = t terms are 0.
    self_term = torch.where(torch.isneginf(log_probs), 0.0, probs * log_probs).sum((-2, -1))
    total_prob, total_log = probs.sum(-2), log_probs.sum(-2)
    cross_term = torch.where(total_prob == 0, 0.0, total_prob * total_log).sum(-1)
    return (num_samples * self_term - cross_term) / (num_samples * (num_samples - 1))
