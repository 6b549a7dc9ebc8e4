"""The shared study statistics (ivon_lora.comparison.stats): the paired bootstrap equal to a plain re-implementation on
fixed numbers, Student's t against its known quantiles, intervals that cover known answers as often as they claim,
undefined seeds handled one way, and the seed sets disjoint."""

import math
import random
import statistics

import numpy as np
import pytest

from ivon_lora.comparison import stats

# Student's t 97.5% quantiles (df 1-4, as docs/study_numbers.py holds them) and two more from tables.
T_975 = {1: 12.706204736174698, 2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977934,
         10: 2.2281388519649385, 30: 2.0422724563012373}  # fmt: skip


@pytest.mark.parametrize("df, quantile", sorted(T_975.items()))
def test_t_quantile_is_students(df, quantile):
    assert stats.t_quantile(0.975, df) == pytest.approx(quantile, rel=1e-10)
    assert stats.t_quantile(0.025, df) == pytest.approx(-quantile, rel=1e-10)


def test_t_quantile_tends_to_the_normal_and_refuses_nonsense():
    assert stats.t_quantile(0.975, 100_000) == pytest.approx(1.959963984540054, rel=1e-4)
    assert stats.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    for p, df in ((1.0, 3), (0.0, 3), (0.9, 0)):
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


def test_summarize_drops_undefined_values_and_counts_them():
    summary = stats.summarize([0.5, None, 0.7, float("nan"), 0.9], scale=100)
    assert summary.values == (50.0, 70.0, 90.0) and summary.undefined == 2 and summary.n == 3
    assert summary.mean == pytest.approx(70.0) and summary.std == pytest.approx(statistics.stdev([50, 70, 90]))
    low, high = summary.interval()
    half = T_975[2] * summary.std / math.sqrt(3)
    assert (low, high) == pytest.approx((70.0 - half, 70.0 + half))
    assert summary.as_dict()["interval"] == [low, high]
    single = stats.summarize([0.3])
    assert (single.mean, single.std, single.interval()) == (0.3, None, None)
    assert stats.summarize([None]).mean is None


def test_mean_std_text_renders_each_case_one_way():
    assert stats.mean_std_text([0.5, 0.7], scale=100) == "60.0 ± 14.1"
    assert stats.mean_std_text([0.123], digits=3) == "0.123"
    assert stats.mean_std_text([None, None]) == "-"
    assert stats.mean_std_text(None) == "-"
    assert stats.mean_std_text([None], undefined="undefined") == "undefined"
    assert stats.mean_std_text([0.5, None, 0.7], 100, count_undefined=True) == "60.0 ± 14.1 (2 of 3 seeds defined)"
    assert stats.interval_text(0.0123, (-0.01, 0.03), scale=100, signed=True) == "+1.2 [-1.0, +3.0]"
    assert stats.interval_text(0.5, None, digits=3) == "0.500"


def _plain_paired_bootstrap(first, second, statistic, replicates, seed, confidence):
    """The definition, one replicate and one seed at a time, in plain Python."""
    n = len(first[0])
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    differences = []
    for rows in draws:
        per_seed = []
        for a, b in zip(first, second):
            per_seed.append(statistic([a[i] for i in rows]) - statistic([b[i] for i in rows]))
        differences.append(sum(per_seed) / len(per_seed))
    differences.sort()

    def quantile(q):  # numpy's default (linear) quantile
        position = q * (len(differences) - 1)
        low = math.floor(position)
        high = min(low + 1, len(differences) - 1)
        return differences[low] + (position - low) * (differences[high] - differences[low])

    tail = (1 - confidence) / 2
    observed = sum(statistic(a) - statistic(b) for a, b in zip(first, second)) / len(first)
    return observed, [quantile(tail), quantile(1 - tail)]


# Two methods, three seeds, twelve test examples: per-example NLLs and 0/1 hits.
FIRST = [[0.1, 0.5, 0.2, 1.3, 0.05, 0.7, 0.4, 0.9, 0.3, 0.2, 2.1, 0.6],
         [0.2, 0.4, 0.3, 1.1, 0.10, 0.8, 0.5, 0.7, 0.2, 0.3, 1.9, 0.5],
         [0.1, 0.6, 0.2, 1.6, 0.07, 0.6, 0.3, 1.0, 0.4, 0.1, 2.4, 0.7]]  # fmt: skip
SECOND = [[0.3, 0.5, 0.6, 1.0, 0.20, 0.9, 0.4, 1.2, 0.5, 0.2, 1.5, 0.9],
          [0.2, 0.7, 0.5, 1.2, 0.30, 0.9, 0.6, 1.1, 0.4, 0.4, 1.6, 0.8],
          [0.4, 0.6, 0.4, 1.4, 0.25, 1.0, 0.3, 0.9, 0.6, 0.3, 1.8, 0.6]]  # fmt: skip


def _mean(values):
    return sum(values) / len(values)


def test_the_paired_bootstrap_of_a_mean_equals_the_plain_definition():
    result = stats.paired_bootstrap([np.array(a) for a in FIRST], [np.array(b) for b in SECOND], replicates=700,
                                    seed=11)  # fmt: skip
    observed, interval = _plain_paired_bootstrap(FIRST, SECOND, _mean, 700, 11, 0.95)
    assert result["difference"] == pytest.approx(observed, abs=1e-12)
    assert result["interval"] == pytest.approx(interval, abs=1e-12)
    assert result["per_seed"] == pytest.approx([_mean(a) - _mean(b) for a, b in zip(FIRST, SECOND)], abs=1e-12)
    assert (result["replicates"], result["seed"], result["confidence"]) == (700, 11, 0.95)


def test_the_paired_bootstrap_of_any_statistic_equals_the_plain_definition():
    """A statistic that is no mean (here the median, as ECE is no mean), over 2-column rows."""
    first = [np.array([[v, 1.0] for v in seed]) for seed in FIRST]
    second = [np.array([[v, 1.0] for v in seed]) for seed in SECOND]

    def median_of_rows(rows):
        return float(np.median(np.asarray(rows)[:, 0]))

    result = stats.paired_bootstrap(first, second, median_of_rows, replicates=300, seed=5, confidence=0.9)
    observed, interval = _plain_paired_bootstrap(first, second, median_of_rows, 300, 5, 0.9)
    assert result["difference"] == pytest.approx(observed, abs=1e-12)
    assert result["interval"] == pytest.approx(interval, abs=1e-12)


def test_a_vectorized_statistic_gives_the_plain_definition_too():
    first = [np.array(seed) for seed in FIRST]
    second = [np.array(seed) for seed in SECOND]

    def maximum(rows):  # R x n -> R
        return rows.max(axis=-1)

    result = stats.paired_bootstrap(first, second, maximum, replicates=300, seed=4, vectorized=True)
    observed, interval = _plain_paired_bootstrap(FIRST, SECOND, max, 300, 4, 0.95)
    assert result["difference"] == pytest.approx(observed, abs=1e-12)
    assert result["interval"] == pytest.approx(interval, abs=1e-12)


def test_the_paired_bootstrap_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="same number of seeds"):
        stats.paired_bootstrap([np.zeros(3)], [np.zeros(3), np.zeros(3)])
    with pytest.raises(ValueError, match="same test examples"):
        stats.paired_bootstrap([np.zeros(3)], [np.zeros(4)])


def test_the_bootstrap_draws_in_blocks_are_one_stream():
    blocks = np.concatenate(list(stats.bootstrap_indices(37, 600, 2)))
    assert blocks.shape == (600, 37)
    assert (blocks == np.random.default_rng(2).integers(0, 37, size=(600, 37))).all()


def test_the_paired_bootstrap_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Test sets of 300 paired examples whose true accuracy gap is 0.05 (hits correlated within a pair): over 200
    test sets, the interval holds 0.05 about 95% of the time."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        shared = rng.random(300)
        first = (shared < 0.80).astype(float)  # accuracy 0.80
        second = (np.where(rng.random(300) < 0.5, shared, rng.random(300)) < 0.75).astype(float)  # accuracy 0.75
        low, high = stats.paired_bootstrap([first], [second], replicates=400, seed=trial)["interval"]
        covered += low <= 0.05 <= high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_the_t_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    for n in (2, 3, 5):
        covered = 0
        for _ in range(2000):
            low, high = stats.summarize([rng.gauss(1.0, 0.3) for _ in range(n)]).interval()
            covered += low <= 1.0 <= high
        assert 0.93 <= covered / 2000 <= 0.97, (n, covered)


def test_seed_sets_are_disjoint_and_counted_from_the_selection_seeds():
    assert stats.seed_sets(3, 1) == ([0], [1, 2, 3])
    assert stats.seed_sets(2, 0) == ([], [0, 1])
    assert stats.seed_sets([10, 11], [0, 1]) == ([0, 1], [10, 11])
    assert stats.seed_sets(2, [5]) == ([5], [6, 7])
    with pytest.raises(ValueError, match="at least 2"):
        stats.seed_sets(1, 1)
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] are both selection and reported"):
        stats.seed_sets([1, 2], [1])
    with pytest.raises(ValueError, match="repeat a seed"):
        stats.seed_sets([1, 1], [0])


def test_markdown_table():
    assert stats.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
