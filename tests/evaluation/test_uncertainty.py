"""Confidence scores of generated answers against hand-computed cases and plain numpy / loop re-implementations."""

import itertools
import math

import numpy as np
import pytest
import torch

from ivon_lora.evaluation.uncertainty import (
    CONFIDENCE_SCORES,
    answer_mean,
    bma_log_likelihood,
    expected_pairwise_kl,
    mean_token_log_likelihood,
    mutual_information,
    semantic_agreement,
    semantic_clusters,
    semantic_entropy,
    sequence_log_likelihood,
    with_remaining_mass,
)
from ivon_lora.tasks import JUDGES


def random_log_probs(*shape, seed=0, sharpness=3.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=generator) * sharpness, dim=-1)


def plain_mutual_information(distributions):
    """MI of S distributions (rows of probabilities), from the definition with loops."""
    s, v = len(distributions), len(distributions[0])
    mean = [sum(p[j] for p in distributions) / s for j in range(v)]

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    return entropy(mean) - sum(entropy(p) for p in distributions) / s


def plain_pairwise_kl(distributions):
    s = len(distributions)
    total = 0.0
    for a, b in itertools.permutations(range(s), 2):
        total += sum(p * math.log(p / q) for p, q in zip(distributions[a], distributions[b]) if p > 0)
    return total / (s * (s - 1))


def test_sequence_likelihood_known_answer_and_batches_with_a_mask():
    token_log_probs = torch.log(torch.tensor([0.5, 0.25]))
    assert float(sequence_log_likelihood(token_log_probs)) == pytest.approx(math.log(0.125))
    assert float(mean_token_log_likelihood(token_log_probs)) == pytest.approx(math.log(0.125) / 2)
    # A padded batch: each row equals the row alone, whatever is in its padding.
    answers = [[-0.1, -2.0, -0.5], [-1.5], [-0.3, -0.7]]
    padded = torch.tensor([row + [-99.0] * (3 - len(row)) for row in answers])
    mask = torch.tensor([[True] * len(row) + [False] * (3 - len(row)) for row in answers])
    assert sequence_log_likelihood(padded, mask).tolist() == pytest.approx([sum(row) for row in answers])
    assert mean_token_log_likelihood(padded, mask).tolist() == pytest.approx([np.mean(row) for row in answers])
    with pytest.raises(ValueError, match=r"The answer at index \[1\] has no tokens"):
        mean_token_log_likelihood(padded, torch.tensor([[True, False, False], [False] * 3, [True] * 3]))
    with pytest.raises(ValueError, match="Expected a mask of shape"):
        sequence_log_likelihood(padded, mask[:, :2])


def test_bma_log_likelihood_is_the_log_mean_of_the_sample_likelihoods():
    sample_log_likelihoods = np.array([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    expected = np.log(np.exp(sample_log_likelihoods).mean(axis=1))
    assert bma_log_likelihood(sample_log_likelihoods).tolist() == pytest.approx(expected.tolist())
    # Long answers: likelihoods far below float range stay finite (log-mean-exp, not a mean of exp).
    assert float(bma_log_likelihood(torch.tensor([-1000.0, -1000.0 - math.log(3)]))) == pytest.approx(
        -1000 + math.log((1 + 1 / 3) / 2)
    )
    # The BMA likelihood is at least the worst sample's and at most the best sample's.
    values = torch.randn(50, 4, generator=torch.Generator().manual_seed(1)) * 5
    bma = bma_log_likelihood(values)
    assert (bma >= values.min(-1).values - 1e-12).all() and (bma <= values.max(-1).values + 1e-12).all()


def test_two_samples_known_disagreement():
    log_probs = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    entropy_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert float(mutual_information(log_probs)) == pytest.approx(math.log(2) - entropy_09)
    assert float(expected_pairwise_kl(log_probs)) == pytest.approx(0.8 * math.log(9))
    # Samples that agree have no epistemic disagreement, however uncertain each is.
    same = torch.log(torch.tensor([[0.3, 0.3, 0.4]] * 4))
    assert float(mutual_information(same)) == pytest.approx(0, abs=1e-12)
    assert float(expected_pairwise_kl(same)) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("num_samples", [2, 3, 7])
def test_disagreement_matches_the_plain_definitions(num_samples):
    log_probs = random_log_probs(4, 5, num_samples, 11, seed=num_samples)  # [batch, positions, S, V]
    mi, epkl = mutual_information(log_probs), expected_pairwise_kl(log_probs)
    assert mi.shape == epkl.shape == (4, 5)
    for b, t in itertools.product(range(4), range(5)):
        distributions = log_probs[b, t].double().exp().tolist()
        assert float(mi[b, t]) == pytest.approx(plain_mutual_information(distributions), abs=1e-10)
        assert float(epkl[b, t]) == pytest.approx(plain_pairwise_kl(distributions), abs=1e-10)
    assert (epkl >= mi - 1e-12).all() and (mi >= -1e-12).all()  # EPKL bounds MI (Malinin & Gales)


def test_tokens_outside_every_support_add_nothing():
    log_probs = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]]))
    reference = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    assert float(mutual_information(log_probs)) == pytest.approx(float(mutual_information(reference)))
    assert float(expected_pairwise_kl(log_probs)) == pytest.approx(float(expected_pairwise_kl(reference)))


def test_a_top_k_support_with_the_remaining_mass_bounds_the_full_values_from_below():
    log_probs = torch.log_softmax(random_log_probs(6, 4, 50, seed=3, sharpness=2.0).double(), -1)  # [T, S, V]
    top = torch.topk(log_probs.exp().mean(-2), k=5, dim=-1).indices  # a common support: the mean's top 5
    support = torch.gather(log_probs, -1, top[:, None, :].expand(-1, 4, -1))
    coarse = with_remaining_mass(support)
    assert coarse.shape == (6, 4, 6)
    assert torch.logsumexp(coarse, -1).abs().max() < 1e-12
    assert (mutual_information(coarse) <= mutual_information(log_probs) + 1e-12).all()
    assert (expected_pairwise_kl(coarse) <= expected_pairwise_kl(log_probs) + 1e-12).all()
    # A support that holds all the mass loses nothing (the remaining bucket is empty).
    whole = with_remaining_mass(log_probs)
    assert (whole[..., -1] < -30).all()
    assert mutual_information(whole).tolist() == pytest.approx(mutual_information(log_probs).tolist(), abs=1e-9)


def test_disagreement_refuses_unnormalised_log_probs_and_a_single_sample():
    with pytest.raises(ValueError, match="must sum to one over the last dimension"):
        mutual_information(torch.randn(3, 10))
    with pytest.raises(ValueError, match="at least 2 posterior samples"):
        expected_pairwise_kl(random_log_probs(1, 10))


def test_answer_mean_averages_over_the_answer_positions():
    values = torch.tensor([[1.0, 2.0, 6.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert answer_mean(values, mask).tolist() == [3.0, 4.0]
    assert float(answer_mean(torch.tensor([1.0, 3.0]))) == 2.0


def test_semantic_clusters_entropy_and_agreement_by_the_judge():
    equivalent = JUDGES["exact_match"].equivalent
    answers = ["Paris", "paris.", "London", "the Paris", "Rome"]
    assert semantic_clusters(answers, equivalent) == [0, 0, 1, 0, 2]
    expected = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert semantic_entropy(answers, equivalent) == pytest.approx(expected)
    assert semantic_agreement("Paris!", answers, equivalent) == pytest.approx(0.6)
    assert semantic_agreement("Berlin", answers, equivalent) == 0.0
    assert semantic_entropy(["x"] * 4, equivalent) == 0.0
    numeric = JUDGES["numeric_match"].equivalent
    assert semantic_clusters(["#### 5", "5.0", "It is 6", "no idea", "no idea"], numeric) == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least one sampled answer"):
        semantic_entropy([], equivalent)


def test_semantic_scores_match_a_plain_implementation():
    """Greedy clustering against the first member of each cluster, entropy of the cluster shares (numpy)."""
    equivalent = JUDGES["exact_match"].equivalent
    rng = np.random.default_rng(0)
    words = ["a cat", "Cat", "dog", "the dog!", "emu", "Emu.", "fox"]
    for _ in range(20):
        answers = list(rng.choice(words, size=int(rng.integers(1, 9))))
        firsts, labels = [], []
        for answer in answers:
            match = [i for i, first in enumerate(firsts) if equivalent(first, answer)]
            labels.append(match[0] if match else len(firsts))
            firsts += [] if match else [answer]
        shares = np.bincount(labels) / len(labels)
        assert semantic_entropy(answers, equivalent) == pytest.approx(float(-(shares * np.log(shares)).sum()))
        chosen = answers[0]
        assert semantic_agreement(chosen, answers, equivalent) == pytest.approx(shares[labels[0]])


def test_every_score_is_registered_with_its_probability_reading():
    assert list(CONFIDENCE_SCORES) == [
        "sequence_log_likelihood", "mean_token_log_likelihood", "bma_log_likelihood", "neg_mutual_information",
        "neg_expected_pairwise_kl", "semantic_agreement", "neg_semantic_entropy"]  # fmt: skip
    probability = {name: score.probability for name, score in CONFIDENCE_SCORES.items() if score.probability}
    assert sorted(probability) == ["bma_log_likelihood", "semantic_agreement", "sequence_log_likelihood"]
    assert float(probability["sequence_log_likelihood"](torch.tensor(math.log(0.25)))) == pytest.approx(0.25)
    assert float(probability["semantic_agreement"](torch.tensor(0.4))) == pytest.approx(0.4)
