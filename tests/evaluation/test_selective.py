"""Selective-generation metrics of a confidence score vs correctness, against hand-computed cases and plain
re-implementations (loops, numpy), ties and the all-correct / all-wrong edge cases included."""

import itertools
import math

import numpy as np
import pytest
import torch

from ivon_lora.evaluation.metrics import risk_coverage, selective_prediction
from ivon_lora.evaluation.selective import (
    SELECTIVE_METRICS,
    auroc,
    prediction_rejection_ratio,
    rejection_area,
    selective_generation_metrics,
)


def tied_case(n=60, seed=0, levels=6):
    """Confidences on a few levels (so that ties are common) and correctness that depends on them."""
    rng = np.random.default_rng(seed)
    confidence = rng.integers(0, levels, n) / levels
    correct = (rng.random(n) < 0.2 + 0.6 * confidence).astype(int)
    return confidence, correct


def plain_auroc(confidence, correct):
    pairs = [(c, w) for c, y in zip(confidence, correct) if y for w, z in zip(confidence, correct) if not z]
    return sum(1.0 if c > w else 0.5 if c == w else 0.0 for c, w in pairs) / len(pairs)


def polygraph_rejection_area(confidence, quality):
    """LM-Polygraph's prediction-rejection area for one order (most confident first, ties by position)."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    sorted_quality = np.asarray(quality, dtype=float)[order]
    return float(np.mean(np.cumsum(sorted_quality) / np.arange(1, len(sorted_quality) + 1)))


def polygraph_prr(confidence, quality, random_orders=None, seed=42):
    """(A - A_random) / (A_oracle - A_random); A_random the mean quality, or LM-Polygraph's average over shuffles."""
    oracle = polygraph_rejection_area(quality, quality)
    if random_orders is None:
        random = float(np.mean(quality))
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(len(quality)) for _ in range(random_orders)]
        random = np.mean([polygraph_rejection_area(order, quality) for order in orders])
    return (polygraph_rejection_area(confidence, quality) - random) / (oracle - random)


def plain_risk_coverage(confidence, correct, level):
    """Thresholds at every distinct confidence, accepting everything at or above it; AURC over acceptance counts."""
    n = len(confidence)
    risks, best = [], 0.0
    for k in range(1, n + 1):  # k answers accepted one at a time; a tie group's counts carry the group's risk
        threshold = sorted(confidence, reverse=True)[k - 1]
        accepted = [y for c, y in zip(confidence, correct) if c >= threshold]
        risks.append(1 - sum(accepted) / len(accepted))
        if risks[-1] <= level + 1e-12:
            best = max(best, len(accepted) / n)
    return sum(risks) / n, best


def plain_ece(probability, correct, num_bins):
    bins = [[] for _ in range(num_bins)]
    for p, y in zip(probability, correct):
        bins[min(num_bins - 1, max(0, math.ceil(p * num_bins) - 1))].append((p, y))  # bins (lo, hi]
    return sum(abs(sum(p for p, _ in b) - sum(y for _, y in b)) for b in bins) / len(correct)


def test_hand_case_with_a_tie():
    # Confidences 0.9 (right), 0.8 (right), 0.8 (wrong), 0.1 (wrong).
    confidence, correct = [0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0]
    # Pairs (right, wrong): (0.9, 0.8) 1, (0.9, 0.1) 1, (0.8, 0.8) 1/2, (0.8, 0.1) 1 -> 3.5 / 4.
    assert auroc(confidence, correct) == pytest.approx(0.875)
    # Mean accuracy of the k most confident, the tie broken either way: k=1 1, k=2 3/4, k=3 2/3, k=4 1/2.
    area = (1 + 0.75 + 2 / 3 + 0.5) / 4
    oracle = (1 + 1 + 2 / 3 + 0.5) / 4
    assert rejection_area(confidence, correct) == pytest.approx(area)
    assert prediction_rejection_ratio(confidence, correct) == pytest.approx((area - 0.5) / (oracle - 0.5))


def test_auroc_matches_the_pairwise_definition_with_ties():
    for seed in range(5):
        confidence, correct = tied_case(seed=seed)
        assert auroc(confidence, correct) == pytest.approx(plain_auroc(confidence, correct))
    assert auroc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0 and auroc([0.1, 0.2, 0.3], [1, 0, 0]) == 0.0
    assert auroc([0.5] * 4, [0, 1, 0, 1]) == 0.5


def test_prr_without_ties_is_lm_polygraphs():
    rng = np.random.default_rng(1)
    for _ in range(5):
        confidence = rng.random(40)
        correct = (rng.random(40) < confidence).astype(int)
        assert prediction_rejection_ratio(confidence, correct) == pytest.approx(polygraph_prr(confidence, correct))
        # LM-Polygraph's random baseline (an average over random orders) converges to the mean quality used here.
        assert prediction_rejection_ratio(confidence, correct) == pytest.approx(
            polygraph_prr(confidence, correct, random_orders=2000), abs=0.03
        )


def test_prr_with_ties_is_lm_polygraphs_averaged_over_the_orders_of_tied_answers():
    confidence = [0.9, 0.5, 0.5, 0.5, 0.2, 0.2, 0.1]
    correct = [1, 0, 1, 1, 0, 1, 0]
    values = []
    for tie_break in itertools.permutations(range(len(confidence))):  # every order of the tied answers
        keys = [(c, -t) for c, t in zip(confidence, tie_break)]
        ranks = {key: rank for rank, key in enumerate(sorted(keys))}
        values.append(polygraph_prr([ranks[k] for k in keys], correct))
    assert prediction_rejection_ratio(confidence, correct) == pytest.approx(np.mean(values))


def test_prr_reference_points():
    correct = [1, 0, 1, 1, 0, 0, 1]
    assert prediction_rejection_ratio([0.3] * 7, correct) == pytest.approx(0.0)  # a constant score is random
    assert prediction_rejection_ratio(correct, correct) == pytest.approx(1.0)  # two-valued, yet perfect
    assert prediction_rejection_ratio([-y for y in correct], correct) < -0.9  # backwards


def test_aurc_and_coverage_at_risk_match_the_plain_implementation():
    for seed in range(4):
        confidence, correct = tied_case(seed=seed)
        result = selective_generation_metrics(confidence, correct)
        for level, column in ((0.01, "coverage@1%"), (0.05, "coverage@5%"), (0.1, "coverage@10%")):
            aurc, coverage = plain_risk_coverage(list(confidence), list(correct), level)
            assert result[column] == pytest.approx(coverage)
        assert result["aurc"] == pytest.approx(aurc)
        assert result["accuracy"] == pytest.approx(np.mean(correct))
    # A tied group enters together: 0.8/0.8 = 1 right + 1 wrong, so 5% risk allows only the 0.9 answer.
    result = selective_generation_metrics([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])
    assert (result["coverage@5%"], result["coverage@10%"]) == (0.25, 0.25)


def test_ece_of_a_probability_score_matches_the_plain_binning():
    rng = np.random.default_rng(2)
    probability = rng.random(200)
    correct = (rng.random(200) < probability).astype(int)
    result = selective_generation_metrics(np.log(probability), correct, probability=probability, ece_bins=(10, 15))
    assert result["ece_10"] == pytest.approx(plain_ece(probability, correct, 10))
    assert result["ece_15"] == pytest.approx(plain_ece(probability, correct, 15))
    assert not any(key.startswith("ece") for key in selective_generation_metrics(probability, correct))
    with pytest.raises(ValueError, match=r"one probability in \[0, 1\] per answer"):
        selective_generation_metrics(probability, correct, probability=probability + 1)


@pytest.mark.parametrize("value, reason", [(1, "every answer is correct"), (0, "every answer is wrong")])
def test_all_correct_or_all_wrong_gives_nan_with_a_reason_not_a_crash(value, reason):
    confidence, correct = [0.9, 0.4, 0.4, 0.1], [value] * 4
    result = selective_generation_metrics(confidence, correct, probability=confidence)
    assert math.isnan(result["auroc"]) and math.isnan(result["prr"])
    assert result["undefined"]["auroc"].startswith(reason) and result["undefined"]["prr"].startswith(reason)
    assert result["aurc"] == 1.0 - value and result["coverage@5%"] == float(value) and result["accuracy"] == value
    assert result["ece_10"] == pytest.approx(plain_ece(confidence, correct, 10))
    assert selective_generation_metrics(confidence, [1, 0, 0, 0])["undefined"] == {}


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="Confidence of answer 1 is NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="Correctness values must be 0 or 1"):
        prediction_rejection_ratio([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="Expected N confidences and N correctness values"):
        selective_generation_metrics([0.1, 0.2], [0])
    # -inf (an answer of probability 0) ranks last.
    assert auroc([float("-inf"), 0.2], [0, 1]) == 1.0


def test_registry_and_the_shared_risk_coverage():
    assert list(SELECTIVE_METRICS) == ["accuracy", "auroc", "prr", "aurc", "coverage@1%", "coverage@5%",
                                       "coverage@10%", "ece"]  # fmt: skip
    assert {name for name, metric in SELECTIVE_METRICS.items() if not metric.higher_is_better} == {"aurc", "ece"}
    # Selective classification is the same computation on the max probabilities and argmax hits.
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 3, generator=generator), dim=1)
    gold = torch.randint(0, 3, (50,), generator=generator)
    confidence, prediction = probs.max(dim=1)
    assert selective_prediction(probs, gold) == risk_coverage(confidence, prediction == gold)
