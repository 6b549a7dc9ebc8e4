"""The statistics of seeded studies, in one place: `ivon-lora compare` and the study scripts (`scripts/study_*.py`).

- `summarize`: a metric over seeds as its mean, sample standard deviation and Student-t interval. Undefined values
  (None, NaN: an AUROC of a seed with no error) are dropped and counted, the same way for every study.
- `paired_bootstrap`: the difference of a metric between two methods scored on the same test examples, with a
  percentile interval (see its doc for how the seeds are combined).
- `seed_sets`: the selection seeds and the reported seeds of a study, disjoint.

Pure Python and numpy: a study script imports it without torch or transformers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
DEFAULT_REPLICATES = 2000
# Replicates drawn per block: a block of B x n indices stays small whatever the test split's size.
_BLOCK = 256


def defined_values(values: Iterable) -> list[float]:
    """The values that are numbers: None and NaN (a metric undefined for that seed) dropped."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The `probability` quantile of Student's t with `degrees_of_freedom` (>= 1), by bisection on its CDF."""
    if not 0.0 < probability < 1.0 or degrees_of_freedom < 1:
        raise ValueError(f"Invalid t quantile arguments: p={probability}, df={degrees_of_freedom}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, degrees_of_freedom)
    low, high = 0.0, 1.0
    while _t_cdf(high, degrees_of_freedom) < probability:
        high *= 2.0
    for _ in range(200):  # the bracket halves each time: far below float resolution long before 200
        middle = (low + high) / 2.0
        if _t_cdf(middle, degrees_of_freedom) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15 * high:
            break
    return (low + high) / 2.0


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)."""
    return 1.0 - 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz's method), on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * fraction / a


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: the defined values, how many were undefined, their mean and sample standard deviation
    (n - 1; None below 2 values)."""

    values: tuple[float, ...]
    undefined: int
    mean: float | None
    std: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """The Student-t interval of the mean over the seeds (None below 2 values)."""
        if self.std is None:
            return None
        half = t_quantile(0.5 + confidence / 2.0, self.n - 1) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    def as_dict(self, confidence: float = CONFIDENCE) -> dict:
        interval = self.interval(confidence)
        return {"mean": self.mean, "std": self.std, "n": self.n, "undefined": self.undefined,
                "interval": None if interval is None else list(interval), "values": list(self.values)}  # fmt: skip


def summarize(values: Iterable, scale: float = 1.0) -> Summary:
    """`values` (one per seed; None or NaN where undefined) times `scale`, summarized."""
    values = list(values)
    kept = [scale * v for v in defined_values(values)]
    mean = statistics.fmean(kept) if kept else None
    std = statistics.stdev(kept) if len(kept) > 1 else None
    return Summary(tuple(kept), len(values) - len(kept), mean, std)


def mean_std_text(values: Iterable, scale: float = 1.0, digits: int = 1, undefined: str = "-",
                  count_undefined: bool = False) -> str:  # fmt: skip
    """A table cell: "mean ± std" over the defined values, the value alone for one, `undefined` for none;
    `count_undefined` appends "(k of n seeds defined)" when some are undefined."""
    summary = summarize([] if values is None else values, scale)
    if summary.n == 0:
        return undefined
    text = f"{summary.mean:.{digits}f}" if summary.n == 1 else f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"
    if count_undefined and summary.undefined:
        text += f" ({summary.n} of {summary.n + summary.undefined} seeds defined)"
    return text


def interval_text(value: float, interval: Sequence[float] | None, scale: float = 1.0, digits: int = 1,
                  signed: bool = False) -> str:  # fmt: skip
    """The value and its interval as "value [low, high]" (the value alone without one), times `scale`; `signed`
    writes "+" too."""
    sign = "+" if signed else ""
    text = f"{scale * value:{sign}.{digits}f}"
    if interval is None:
        return text
    return f"{text} [{scale * interval[0]:{sign}.{digits}f}, {scale * interval[1]:{sign}.{digits}f}]"


def bootstrap_indices(num_examples: int, replicates: int, seed: int) -> Iterable[np.ndarray]:
    """The replicates' example indices, drawn with replacement, in blocks of at most `_BLOCK` rows (each block
    `rows x num_examples`), from numpy's PCG64 seeded with `seed`: the same draws for the same arguments."""
    rng = np.random.default_rng(seed)
    for start in range(0, replicates, _BLOCK):
        yield rng.integers(0, num_examples, size=(min(_BLOCK, replicates - start), num_examples))


def paired_bootstrap(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    statistic: Callable[[np.ndarray], float] | None = None,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    vectorized: bool = False,
) -> dict:
    """The difference statistic(first) - statistic(second), averaged over seeds, and its percentile interval.

    `first[s]` and `second[s]` hold seed s's per-example values of two methods on the same test examples, in the
    same order (arrays of n rows; a row may be a vector, e.g. an example's probabilities and gold label, which
    `statistic` reads). `statistic(rows) -> float` is the metric over a set of rows; None: their mean (a metric
    that is a mean of per-example values, such as accuracy or NLL, computed for all replicates at once).
    `vectorized`: `statistic` takes a block of replicates at once (an array of R x n rows) and returns R values.

    How the seeds are combined: the difference is the mean over seeds of each seed's difference. Each replicate
    draws n test examples with replacement once and scores that draw in every seed, for both methods (the seeds
    share their test examples, so they share the draw: the interval is the test set's sampling error of the
    seed-averaged difference; the seeds' own spread is in "per_seed"). The interval is the (1 - confidence) / 2 and
    (1 + confidence) / 2 quantiles of the replicates' differences (numpy's linear interpolation).

    Returns {"difference", "interval": [low, high], "per_seed": [each seed's difference], "replicates", "seed",
    "confidence"}.
    """
    if len(first) != len(second) or not first:
        raise ValueError(f"Expected the same number of seeds (>= 1) for both methods, got {len(first)} and "
                         f"{len(second)}")  # fmt: skip
    first, second = [np.asarray(a) for a in first], [np.asarray(b) for b in second]
    n = len(first[0])
    if n == 0 or any(len(values) != n for values in first + second):
        raise ValueError("Every seed of both methods needs the same test examples (n > 0)")
    if statistic is None:
        gaps = [(a - b).astype(np.float64) for a, b in zip(first, second)]
        per_seed = [float(gap.mean()) for gap in gaps]
        draws = []
        for block in bootstrap_indices(n, replicates, seed):
            draws.append(np.mean([gap[block].mean(axis=1) for gap in gaps], axis=0))
    elif vectorized:
        per_seed = [float(statistic(a[None])[0]) - float(statistic(b[None])[0]) for a, b in zip(first, second)]
        draws = []
        for block in bootstrap_indices(n, replicates, seed):
            draws.append(np.mean([statistic(a[block]) - statistic(b[block]) for a, b in zip(first, second)], axis=0))
    else:
        per_seed = [float(statistic(a)) - float(statistic(b)) for a, b in zip(first, second)]
        draws = []
        for block in bootstrap_indices(n, replicates, seed):
            draws.append(np.array([np.mean([float(statistic(a[rows])) - float(statistic(b[rows]))
                                            for a, b in zip(first, second)]) for rows in block]))  # fmt: skip
    draws = np.concatenate(draws)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return {"difference": float(np.mean(per_seed)), "interval": [float(low), float(high)], "per_seed": per_seed,
            "replicates": replicates, "seed": seed, "confidence": confidence}  # fmt: skip


def seed_sets(reported: int | Sequence[int], selection: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """(selection seeds, reported seeds). A count K of selection seeds means 0..K-1; a count N of reported seeds
    means the N seeds after the selection seeds; a list is taken as given. Refused (ValueError): fewer than 2
    reported seeds (nothing to average or pair over), a seed repeated, and a seed in both sets (the settings would be
    chosen on a run that is also reported)."""
    selection_seeds = list(range(selection)) if isinstance(selection, int) else [int(s) for s in selection]
    if isinstance(reported, int):
        start = max(selection_seeds, default=-1) + 1
        reported_seeds = list(range(start, start + reported))
    else:
        reported_seeds = [int(s) for s in reported]
    if len(reported_seeds) < 2:
        raise ValueError(f"{len(reported_seeds)} reported seed(s): a comparison needs at least 2 to average and pair "
                         "over")  # fmt: skip
    for name, seeds in (("reported", reported_seeds), ("selection", selection_seeds)):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"the {name} seeds {seeds} repeat a seed")
    shared = sorted(set(selection_seeds) & set(reported_seeds))
    if shared:
        raise ValueError(f"seed(s) {shared} are both selection and reported seeds: the settings would be chosen on a "
                         "run that is also reported; make the two sets disjoint")  # fmt: skip
    return selection_seeds, reported_seeds


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (a "|---|" rule under the header), with a final newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
