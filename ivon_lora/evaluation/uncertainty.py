"""Confidence scores of a generated answer from S posterior samples: pure functions of what a decoder produces.

Every score is oriented so that **higher = more confident** (the uncertainty measures enter negated, and their
registry names say so: `neg_mutual_information`). Tensor functions take any leading batch dimensions, so one
question and a padded batch of questions go through the same call; they compute in float64.

What each score reads (T: the chosen answer's tokens, S: posterior samples, V: vocabulary):

- `sequence_log_likelihood(token_log_probs [..., T], mask)`: log p(answer | prompt) at the posterior mean, the
  sum of the answer's token log-probs; `mean_token_log_likelihood` divides it by the answer's length. The
  answer's tokens are those the decoder kept, including the end-of-sequence token if it ended the answer.
- `bma_log_likelihood(sample_log_likelihoods [..., S])`: the Bayesian model average, log (1/S) sum_s
  p_s(answer | prompt), from each sample's sequence log-likelihood of the same chosen answer.
- `mutual_information` and `expected_pairwise_kl(log_probs [..., S, V])`: the epistemic disagreement of the S
  samples' next-token distributions at one position of the answer (teacher-forced along the chosen answer);
  `answer_mean(values [..., T], mask)` averages them over the answer's positions. MI = H(mean_s p_s) -
  mean_s H(p_s); EPKL = mean over ordered pairs s != t of KL(p_s || p_t) (Malinin & Gales: EPKL >= MI).
  Input: each sample's full-vocabulary log-softmax, which the decoder has at every step anyway, so the
  per-position values are reduced on the fly and no [S, T, V] tensor is stored; the result is exact. A decoder
  that keeps only a top-k support passes `with_remaining_mass(log_probs on a common support)`: the support's
  tokens plus one bucket for the rest of the vocabulary. Both measures can only shrink under such coarsening
  (data processing inequality), so top-k values are lower bounds of the exact ones, equal when the rest has no
  mass; a support that differs between samples is not comparable, hence the common support.
- `semantic_agreement(chosen, answers, equivalent)`: the share of the S per-sample answers that mean the same as
  the chosen answer; `semantic_entropy(answers, equivalent)`: the entropy (nats) of the frequencies of the
  answer clusters (discrete semantic entropy, Farquhar et al. 2024, without an NLI model). Clusters are formed
  greedily: each answer joins the first cluster whose first member it is equivalent to, else opens a new one.
  `equivalent` is the task's `Judge.equivalent` (symmetric by construction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..registry import Registry
from ..disagreement import _entropy, expected_pairwise_kl, mutual_information  # noqa: F401  (scores too)


def _as_float64(values) -> torch.Tensor:
    return torch.as_tensor(values).double()


def _answer_mask(values: torch.Tensor, mask) -> torch.Tensor:
    if mask is None:
        mask = torch.ones(values.shape, dtype=torch.bool)
    mask = torch.as_tensor(mask).bool()
    if mask.shape != values.shape:
        raise ValueError(f"Expected a mask of shape {tuple(values.shape)}, got {tuple(mask.shape)}")
    return mask


def sequence_log_likelihood(token_log_probs, mask=None) -> torch.Tensor:
    """log p(answer | prompt): the sum over the answer's tokens (mask True) of their log-probs; [..., T] -> [...]."""
    token_log_probs = _as_float64(token_log_probs)
    mask = _answer_mask(token_log_probs, mask)
    return torch.where(mask, token_log_probs, 0.0).sum(-1)


def mean_token_log_likelihood(token_log_probs, mask=None) -> torch.Tensor:
    """`sequence_log_likelihood` divided by the answer's token count (length-normalised); [..., T] -> [...]."""
    token_log_probs = _as_float64(token_log_probs)
    mask = _answer_mask(token_log_probs, mask)
    return sequence_log_likelihood(token_log_probs, mask) / _token_counts(mask)


def _token_counts(mask: torch.Tensor) -> torch.Tensor:
    counts = mask.sum(-1)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0)[0].tolist()
        raise ValueError(f"The answer at index {empty} has no tokens: count the end-of-sequence token that ended it")
    return counts.double()


def bma_log_likelihood(sample_log_likelihoods) -> torch.Tensor:
    """log (1/S) sum_s p_s(answer | prompt) from the S samples' sequence log-likelihoods; [..., S] -> [...]."""
    sample_log_likelihoods = _as_float64(sample_log_likelihoods)
    num_samples = sample_log_likelihoods.shape[-1]
    if num_samples == 0:
        raise ValueError("The Bayesian model average needs at least one posterior sample")
    return torch.logsumexp(sample_log_likelihoods, dim=-1) - math.log(num_samples)


def with_remaining_mass(support_log_probs) -> torch.Tensor:
    """Log-probs on a token support [..., K] plus one last bucket, log(1 - their total mass); -> [..., K + 1]."""
    support_log_probs = _as_float64(support_log_probs)
    rest = torch.log1p(-torch.logsumexp(support_log_probs, dim=-1).exp().clamp(max=1.0))
    return torch.cat([support_log_probs, rest.unsqueeze(-1)], dim=-1)


def answer_mean(values, mask=None) -> torch.Tensor:
    """The mean of per-position values over the answer's positions (mask True); [..., T] -> [...]."""
    values = _as_float64(values)
    mask = _answer_mask(values, mask)
    return torch.where(mask, values, 0.0).sum(-1) / _token_counts(mask)


def semantic_clusters(answers: Sequence[str], equivalent: Callable[[str, str], bool]) -> list[int]:
    """The cluster index of each answer: the first cluster whose first member it is equivalent to, else a new one."""
    representatives: list[str] = []
    clusters = []
    for answer in answers:
        index = next((i for i, first in enumerate(representatives) if equivalent(first, answer)), None)
        if index is None:
            index = len(representatives)
            representatives.append(answer)
        clusters.append(index)
    return clusters


def semantic_entropy(answers: Sequence[str], equivalent: Callable[[str, str], bool]) -> float:
    """Discrete semantic entropy: the entropy (nats) of the answers' cluster frequencies."""
    if not answers:
        raise ValueError("Semantic entropy needs at least one sampled answer")
    counts = torch.bincount(torch.tensor(semantic_clusters(answers, equivalent))).double()
    return float(_entropy((counts / counts.sum()).log()))


def semantic_agreement(chosen: str, answers: Sequence[str], equivalent: Callable[[str, str], bool]) -> float:
    """The share of `answers` (one per posterior sample) equivalent to the `chosen` answer."""
    if not answers:
        raise ValueError("Semantic agreement needs at least one sampled answer")
    return sum(equivalent(chosen, answer) for answer in answers) / len(answers)


@dataclass(frozen=True)
class ConfidenceScore:
    """A reported confidence score (higher = more confident); `probability` turns it into a probability that
    the answer is right, for the ECE (None: the score is not a probability)."""

    name: str
    description: str
    probability: Callable[[torch.Tensor], torch.Tensor] | None = None


CONFIDENCE_SCORES: Registry[ConfidenceScore] = Registry(
    "confidence score",
    (
        (score.name, score)
        for score in (
            ConfidenceScore("sequence_log_likelihood", "log p(answer | prompt) at the posterior mean", torch.exp),
            # exp of it is the geometric mean of the token probabilities, not a probability of the answer.
            ConfidenceScore("mean_token_log_likelihood", "log p(answer | prompt) at the mean / answer tokens"),
            ConfidenceScore("bma_log_likelihood", "log of the mean over samples of p_s(answer | prompt)", torch.exp),
            ConfidenceScore("neg_mutual_information", "minus the samples' next-token mutual information, answer mean"),
            ConfidenceScore("neg_expected_pairwise_kl", "minus the samples' next-token pairwise KL, answer mean"),
            ConfidenceScore(
                "semantic_agreement", "share of the samples' answers equivalent to the chosen one", lambda score: score
            ),  # fmt: skip
            ConfidenceScore("neg_semantic_entropy", "minus the entropy of the samples' answer clusters"),
        )
    ),
)
