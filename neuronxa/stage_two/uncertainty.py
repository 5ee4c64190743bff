"""Intervals and tests: half-samples of the parallel units for scores, resampled languages for correlations.

Scores. μ and retrieval compare every unit with every other one, so the usual bootstrap (units drawn with
replacement) would put copies of a unit side by side, and a copy ties with its original: a tie is a miss, so
the resampled scores would be biased down. Here each resample is a *half-sample*: ⌊n/2⌋ distinct units drawn
without replacement and scored exactly as the whole sample is. For a mean of n values, half-samples without
replacement vary as much as the mean itself does (the finite-population correction), so the half-samples give
the sampling variance with nothing duplicated. A half-sample has fewer rivals per unit than the full sample,
so its scores sit higher; only its *spread* is used, never its level. For shares of units (μ, retrieval) the
spread becomes a design effect (the variance over the binomial one), and the interval is Wilson's for the
observed share with n / design effect units; for other scores and for paired differences it is the normal one.
``tests/test_uncertainty.py`` checks the coverage by simulation (units drawn from a large synthetic
population, the truth being the expected score for n units): 95% intervals of μ and retrieval covered 95–98%
of the time for n = 24–60, paired differences 97–99.5% (conservative: where the two scores' unit-level hits
move together, the half-samples' share of the rival-to-rival variation, which is larger at half the units,
dominates what is left).

Correlations across languages: a percentile bootstrap over languages (pairs kept together; resamples in which
one side is constant have no correlation and are left out), a permutation test for p, and Williams' t for two
correlations with the same benchmark (dependent and overlapping; Steiger 1980 recommends it for small n).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.stats import norm, permutation_test, rankdata
from scipy.stats import t as student_t


def half_samples(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``resamples`` subsets of ⌊n/2⌋ distinct unit positions out of n, sorted, as a (resamples, ⌊n/2⌋) array."""
    rng = np.random.default_rng(seed)
    return np.sort(np.argsort(rng.random((resamples, n)), axis=1)[:, : n // 2], axis=1)


def submatrices(C: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """C restricted to each subset's rows and columns: (resamples, b, b)."""
    return C[subsets[:, :, None], subsets[:, None, :]]


def subset_shares(beaten: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Share of each subset's units that no other unit of the same subset beats, from ``beaten[..., i, j]``
    (j beats i, see ``metrics.beaten``): (..., resamples). One matrix product counts every subset's beaters."""
    n = beaten.shape[-1]
    members = np.zeros((len(subsets), n), dtype=np.float32)
    np.put_along_axis(members, subsets, 1.0, axis=1)
    beaters = members @ np.swapaxes(beaten, -1, -2).astype(np.float32)   # (..., resamples, n), whole counts
    return np.sum((beaters == 0) & (members > 0), axis=-1) / max(subsets.shape[1], 1)


@cache
def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2))


def unit_variance(half_values: np.ndarray, n: int) -> float:
    """Per-unit variance S² implied by half-sample scores: Var(mean of b of n) = S²·(n − b)/(n·b)."""
    b = n // 2
    return float(np.var(half_values, ddof=1) * n * b / (n - b))


def wilson(share: float, units: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a share observed over ``units`` (possibly fractional) units."""
    z = _z(level)
    centre = share + z**2 / (2 * units)
    half_width = z * np.sqrt(share * (1 - share) / units + z**2 / (4 * units**2))
    scale = 1 + z**2 / units
    low, high = (centre - half_width) / scale, (centre + half_width) / scale
    return float(max(0.0, min(low, share))), float(min(1.0, max(high, share)))  # holds the share, rounding too


def share_interval(share: float, half_values: np.ndarray, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for a share of n units whose half-sample shares are given: Wilson's with n / design effect
    units. Where the half-samples do not vary, or sit at 0 or 1, the design effect is taken as 1."""
    half_values = half_values[np.isfinite(half_values)]
    if not np.isfinite(share) or len(half_values) < 2:
        return np.nan, np.nan
    level_b = float(np.mean(half_values))
    variance = unit_variance(half_values, n)
    design_effect = variance / (level_b * (1 - level_b)) if 0 < level_b < 1 and variance > 0 else 1.0
    return wilson(share, n / design_effect, level)


def normal_interval(value: float, half_values: np.ndarray, n: int, level: float = 0.95) -> tuple[float, float]:
    """value ± z·SE with SE² = S²/n from the half-samples (for scores that are not shares, and differences)."""
    half_values = half_values[np.isfinite(half_values)]
    if not np.isfinite(value) or len(half_values) < 2:
        return np.nan, np.nan
    margin = _z(level) * np.sqrt(unit_variance(half_values, n) / n)
    return float(value - margin), float(value + margin)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where a side is constant)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(xc * yc, axis=-1) / np.sqrt(np.sum(xc**2, axis=-1) * np.sum(yc**2, axis=-1))


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ along the last axis: Pearson r of average ranks."""
    return pearson(rankdata(x, axis=-1), rankdata(y, axis=-1))


CORRELATIONS = {"pearson": pearson, "spearman": spearman}


def language_resamples(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """Bootstrap draws of n language positions with replacement: (resamples, n)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def correlation_replicates(x: np.ndarray, y: np.ndarray, kind: str, draws: np.ndarray) -> np.ndarray:
    """The correlation (``kind``) of x and y on each draw of language positions (``language_resamples``),
    all draws in one vectorised call: (resamples,), NaN where a side is constant."""
    return CORRELATIONS[kind](x[draws], y[draws])


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap values, undefined (non-finite) ones left out; NaN under two."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return np.nan, np.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_interval(x: np.ndarray, y: np.ndarray, kind: str, *, resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of a correlation (``kind``) over languages resampled in pairs (undefined resamples
    left out); a paired difference of two correlations is the difference of their ``correlation_replicates``
    on the same draws."""
    values = correlation_replicates(x, y, kind, language_resamples(len(x), resamples, seed))
    return percentile_interval(values, level)


def permutation_p(x: np.ndarray, y: np.ndarray, kind: str, resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p of a correlation, the share of re-pairings of y with x whose |r| is at least the
    observed one (exact over all n! pairings when they are fewer than ``resamples``)."""
    statistic = CORRELATIONS[kind]
    result = permutation_test((y,), lambda b, axis: np.abs(statistic(x, b)), permutation_type="pairings",
                              vectorized=True, n_resamples=resamples, alternative="greater",
                              random_state=np.random.default_rng(seed))
    return float(result.pvalue)


def williams_p(r_a: float, r_b: float, r_ab: float, n: int) -> float:
    """Williams' t test (Steiger 1980, eq. 7) of r_a = corr(a, y) against r_b = corr(b, y) when a and b are
    measured on the same n cases and correlate r_ab: two-sided p on n − 3 degrees of freedom."""
    determinant = 1 - r_a**2 - r_b**2 - r_ab**2 + 2 * r_a * r_b * r_ab
    mean = (r_a + r_b) / 2
    denominator = 2 * (n - 1) / (n - 3) * determinant + mean**2 * (1 - r_ab) ** 3
    if n < 4 or denominator <= 0:
        return np.nan
    t = (r_a - r_b) * np.sqrt((n - 1) * (1 + r_ab) / denominator)
    return float(2 * student_t.sf(abs(t), n - 3))
