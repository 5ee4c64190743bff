"""Intervals: coverage by simulation from a population whose alignment is known, the half-sample values and the
correlation resampling against slow loops, Williams' t under its null, and every language as pivot against the
one-pivot scores."""

import itertools

import numpy as np
import pytest

from helpers import loop_cosine, loop_weak_alignment
from neuronxa.stage_two import metrics, pairwise, registry, scoring, uncertainty
from neuronxa.stage_two.correlation import Resampling, compare, correlate


class Population:
    """Units with a latent meaning z; a language's representation at layer l is a shared offset + z + noise.
    Two representations of the target (two metrics on the same units) differ in their noise."""

    def __init__(self, noise: tuple[float, ...], size: int = 20000, width: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rng, self.noise = rng, noise
        self.z = rng.standard_normal((size, width))
        self.offset = 2 * rng.standard_normal(width)
        self.errors = rng.standard_normal((4, len(noise), size, width))

    def layers(self, units: np.ndarray, representation: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """(pivot, target) states per layer for the given units; representation 0 or 1."""
        scale = 1.0 if representation == 0 else 1.4
        return [(self.offset + self.z[units] + s * self.errors[0, layer, units],
                 -self.offset + self.z[units] + scale * s * self.errors[1 + representation, layer, units])
                for layer, s in enumerate(self.noise)]

    def draw(self, n: int) -> np.ndarray:
        return self.rng.choice(len(self.z), n, replace=False)


def pooled(population, units, representation, subsets, metric):
    """The layer-pooled value and half-sample values of ``metric`` through the production path."""
    values, halves = [], []
    for X, Y in population.layers(units, representation):
        value, half = scoring.layer_values(X, Y, "nas", wanted=["nasca", "retrieval"], subsets=subsets)
        values.append(value[metric])
        halves.append(half[metric])
    return float(np.mean(values)), np.mean(halves, axis=0)


def expected(population, n, representation, metric, draws=1500):
    """The population's expected layer-pooled value for n units (Monte Carlo)."""
    no_subsets = uncertainty.half_samples(n, 0)
    return np.mean([pooled(population, population.draw(n), representation, no_subsets, metric)[0]
                    for _ in range(draws)])


@pytest.mark.parametrize("noise, n, metric", [((0.3, 0.45, 0.6), 24, "nasca"),
                                              ((0.6, 0.8, 1.1), 40, "nasca"),
                                              ((0.3, 0.45, 0.6), 24, "retrieval.nas.pivot_to_target")])
def test_score_intervals_cover_the_expected_score_for_n_units(noise, n, metric):
    population = Population(noise)
    truth = expected(population, n, 0, metric)
    covered = []
    for repeat in range(250):
        subsets = uncertainty.half_samples(n, 200, seed=repeat)
        value, halves = pooled(population, population.draw(n), 0, subsets, metric)
        low, high = scoring.interval(metric, value, halves, n=n, level=0.95)
        covered.append(low <= truth <= high)
    assert 0.91 <= np.mean(covered) <= 0.99, (truth, np.mean(covered))


def test_paired_difference_intervals_cover_the_expected_difference():
    """Conservative (about 98% measured for a 95% interval): see the uncertainty module's docstring."""
    population, n = Population((0.3, 0.45, 0.6), seed=1), 24
    truth = expected(population, n, 0, "nasca") - expected(population, n, 1, "nasca")
    assert abs(truth) > 0.05   # the two representations really differ
    covered, width, unpaired_width = [], [], []
    for repeat in range(250):
        units, subsets = population.draw(n), uncertainty.half_samples(n, 200, seed=repeat)
        (a, half_a), (b, half_b) = (pooled(population, units, r, subsets, "nasca") for r in (0, 1))
        low, high = uncertainty.normal_interval(a - b, half_a - half_b, n, 0.95)
        covered.append(low <= truth <= high)
        width.append(high - low)
        unpaired_width.append(np.diff(scoring.interval("nasca", a, half_a, n=n, level=0.95))[0])
    assert 0.93 <= np.mean(covered) <= 1.0, (truth, np.mean(covered))
    assert np.mean(width) < np.mean(unpaired_width)   # pairing on the same units narrows it


def test_half_samples_are_distinct_units_and_their_scores_match_a_loop():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    subsets = uncertainty.half_samples(9, 30, seed=2)
    assert subsets.shape == (30, 4) and all(len(set(s)) == 4 for s in subsets)
    assert len({tuple(s) for s in subsets}) > 20  # not one subset repeated
    values, halves = scoring.layer_values(X, Y, "hidden", wanted=["mexa", "cka", "anc", "svcca"], subsets=subsets)
    for s, half_mexa, half_cka, half_anc, half_svcca in zip(subsets, halves["mexa"], halves["cka"],
                                                             halves["anc"], halves["svcca"]):
        assert half_mexa == loop_weak_alignment(loop_cosine(X[s], Y[s]).tolist())
        assert half_cka == pytest.approx(metrics.linear_cka(X[s], Y[s]))
        assert half_anc == pytest.approx(metrics.anc(X[s], Y[s]))
        assert half_svcca == pytest.approx(metrics.svcca(X[s], Y[s]))


def test_the_three_directions_half_samples_from_one_product_equal_one_product_each():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(15, 8)), rng.normal(size=(15, 8))
    Y[4] = Y[9]                                               # a tie among the rivals
    subsets = uncertainty.half_samples(15, 40, seed=2)
    pair = registry.LayerPair(X, Y, subsets)
    by_row, by_column = metrics.beaten(metrics.cosine_matrix(X, Y))
    for direction, beaten in zip(registry.DIRECTIONS, (by_row, by_column, by_row | by_column)):   # as before
        value, halves = pair.shares[direction]
        assert value == float(np.mean(~beaten.any(axis=-1)))
        np.testing.assert_array_equal(halves, uncertainty.subset_shares(beaten, subsets))


def former_half_baselines(X, Y, subsets):
    """CKA's and SVCCA's half-sample values as they were computed before, restated: both sides' Gram matrices
    restricted to each half-sample, centred, eigendecomposed and compared pair by pair."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    K, L = (metrics.double_centred(uncertainty.submatrices(G, subsets)) for G in (X @ X.T, Y @ Y.T))
    cka = np.sum(K * L, axis=(-2, -1)) / (np.linalg.norm(K, axis=(-2, -1)) * np.linalg.norm(L, axis=(-2, -1)))
    (Ua, ka), (Ub, kb) = metrics.kept_directions(K), metrics.kept_directions(L)
    Ua = Ua * (np.arange(Ua.shape[-1]) < ka[..., None])[..., None, :]
    Ub = Ub * (np.arange(Ub.shape[-1]) < kb[..., None])[..., None, :]
    correlations = np.clip(np.linalg.svd(np.swapaxes(Ua, -1, -2) @ Ub, compute_uv=False), 0.0, 1.0)
    counted = np.minimum(ka, kb)
    top = np.where(np.arange(correlations.shape[-1]) < counted[..., None], correlations, 0.0)
    return cka, top.sum(axis=-1) / counted


def test_a_pivot_side_shared_by_several_targets_gives_the_former_values_bitwise():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(14, 30)).astype(np.float32)
    subsets = uncertainty.half_samples(14, 25, seed=1)
    pivot = scoring.Side(X, subsets)
    for _ in range(3):   # the first target computes the pivot's side, the others reuse it
        Y = (X + rng.normal(size=X.shape)).astype(np.float32)
        shared = scoring.layer_values(X, Y, "hidden", wanted=["cka", "svcca"], subsets=subsets, pivot=pivot)
        alone = scoring.layer_values(X, Y, "hidden", wanted=["cka", "svcca"], subsets=subsets)
        assert shared[0] == alone[0]
        cka, svcca = former_half_baselines(X, Y, subsets)
        for halves in (shared[1], alone[1]):
            np.testing.assert_array_equal(halves["cka"], cka)
            np.testing.assert_array_equal(halves["svcca"], svcca)


def test_wilson_and_normal_intervals_by_hand():
    low, high = uncertainty.wilson(0.5, 100)
    assert (low, high) == pytest.approx((0.40383, 0.59617), abs=1e-5)   # the textbook value for 50 of 100
    halves = np.array([0.4, 0.6, 0.5, 0.5])               # variance 1/150 over half-samples of 5 of 10 units
    s2 = (1 / 150) * 10 * 5 / 5                             # S² = Var·n·b/(n − b)
    assert uncertainty.unit_variance(halves, 10) == pytest.approx(s2)
    margin = 1.959964 * np.sqrt(s2 / 10)
    assert uncertainty.normal_interval(0.3, halves, 10) == pytest.approx((0.3 - margin, 0.3 + margin), abs=1e-6)
    # design effect S²/(p̄(1 − p̄)) with p̄ = 0.5: Wilson with n / design effect units
    assert uncertainty.share_interval(0.5, halves, 10) == pytest.approx(uncertainty.wilson(0.5, 10 / (s2 / 0.25)))
    assert uncertainty.share_interval(1.0, np.ones(5), 24) == pytest.approx(uncertainty.wilson(1.0, 24))
    assert np.isnan(scoring.interval("nasca", 0.5, np.array([]), n=10, level=0.95)[0])


def test_bootstrap_interval_and_permutation_p_match_slow_loops():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=6), rng.normal(size=6)
    y = y + x
    draws = uncertainty.language_resamples(6, 300, seed=4)
    loop = []
    for draw in draws:
        xs, ys = x[draw], y[draw]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            loop.append(np.corrcoef(xs, ys)[0, 1])
    expected = np.percentile(loop, [2.5, 97.5])
    interval = uncertainty.bootstrap_interval(x, y, "pearson", resamples=300, level=0.95, seed=4)
    assert interval == pytest.approx(tuple(expected))
    r = np.corrcoef(x, y)[0, 1]
    as_extreme = [abs(np.corrcoef(x, y[list(p)])[0, 1]) >= abs(r) - 1e-12 for p in itertools.permutations(range(6))]
    assert uncertainty.permutation_p(x, y, "pearson", 9999) == pytest.approx(np.mean(as_extreme))


def test_williams_test_holds_its_level_under_the_null_and_detects_a_real_difference():
    rng = np.random.default_rng(11)
    n, rejected, detected = 20, [], []
    for _ in range(1500):
        y = rng.normal(size=n)
        a = 0.6 * y + 0.8 * rng.normal(size=n)      # corr(a, y) = corr(b, y) = 0.6; a and b correlated
        b = 0.6 * y + 0.8 * (0.5 * rng.normal(size=n) + 0.866 * rng.normal(size=n))
        r = uncertainty.pearson
        rejected.append(uncertainty.williams_p(r(a, y), r(b, y), r(a, b), n) < 0.05)
        strong = y + 0.2 * rng.normal(size=n)
        detected.append(uncertainty.williams_p(r(strong, y), r(b, y), r(strong, b), n) < 0.05)
    assert 0.03 <= np.mean(rejected) <= 0.07
    assert np.mean(detected) > 0.8


def test_correlation_and_comparison_tables():
    import pandas as pd

    languages = [f"l{i}" for i in range(8)]
    rng = np.random.default_rng(2)
    truth = rng.normal(size=8)
    summary = pd.DataFrame([{"metric": m, "language": lang, "score": truth[i] + noise * rng.normal()}
                            for m, noise in (("nasca", 0.1), ("mexa", 1.0)) for i, lang in enumerate(languages)])
    bench = pd.DataFrame({"benchmark": "x", "language": languages, "value": truth})
    rows = correlate(summary, bench, "eng", Resampling(bootstrap=500)).set_index("metric")
    assert rows.loc["nasca", "pearson_ci_low"] <= rows.loc["nasca", "pearson_r"] <= rows.loc["nasca", "pearson_ci_high"]
    assert rows.loc["nasca", "pearson_permutation_p"] < 0.01
    comparison = compare(summary, bench, "eng", Resampling(bootstrap=500)).set_index("correlation").loc["pearson"]
    assert comparison.metric_a == "nasca" and comparison.difference == pytest.approx(
        rows.loc["nasca", "pearson_r"] - rows.loc["mexa", "pearson_r"])
    assert comparison.ci_low <= comparison.difference <= comparison.ci_high


def test_comparisons_share_each_metrics_bootstrap_and_keep_the_former_bits():
    import pandas as pd

    languages = [f"l{i}" for i in range(9)]
    rng = np.random.default_rng(8)
    truth = rng.normal(size=9)
    summary = pd.DataFrame([{"metric": m, "language": lang, "score": truth[i] + noise * rng.normal()}
                            for m, noise in (("nasca", 0.2), ("mexa", 1.0), ("cka", 0.5)) for i, lang in
                            enumerate(languages)])
    summary.loc[(summary.metric == "cka") & (summary.language == "l3"), "score"] = np.nan   # fewer languages
    bench = pd.DataFrame({"benchmark": np.repeat(["x", "y"], 9), "language": languages * 2,
                          "value": np.concatenate([truth, rng.normal(size=9)])})
    table = compare(summary, bench, "eng", Resampling(bootstrap=300, seed=3))
    assert len(table) == 2 * 3 * 2
    scores = summary.pivot(index="language", columns="metric", values="score")
    for row in table.itertuples():   # the former paired bootstrap, restated: both correlations on each draw
        y = bench[bench.benchmark == row.benchmark].set_index("language")["value"]
        usable = [lang for lang in languages if np.isfinite(scores.loc[lang, [row.metric_a, row.metric_b]]).all()]
        x_a, x_b, y = scores.loc[usable, row.metric_a].to_numpy(), scores.loc[usable, row.metric_b].to_numpy(), \
            y[usable].to_numpy()
        draws = uncertainty.language_resamples(len(usable), 300, seed=3)
        statistic = uncertainty.CORRELATIONS[row.correlation]
        values = statistic(x_a[draws], y[draws]) - statistic(x_b[draws], y[draws])
        values, tail = values[np.isfinite(values)], 100 * (1 - 0.95) / 2   # 2.4999999999999982, as it was
        assert row.n == len(usable)
        assert (row.ci_low, row.ci_high) == (np.percentile(values, tail), np.percentile(values, 100 - tail))


def test_every_pivot_equals_the_one_pivot_scores(store):
    languages = ["eng_Latn", "fra_Latn", "xxx_Latn"]
    pairs = pairwise.pairwise(store, ["nasca", "mexa", "cka"], "weighted", languages=languages, resamples=50,
                              progress=False)
    assert set(pairs.metric) == {"nasca", "mexa"} and len(pairs) == 2 * 6
    for pivot in languages:
        scores, resampled = scoring.score(store, ["nasca", "mexa"], "weighted", pivot=pivot, languages=languages,
                                          progress=False, resamples=50)
        summary = scoring.summarise(scores, "mean", resampled).set_index(["metric", "language"])
        for row in pairs[pairs["pivot"] == pivot].itertuples():
            expected = summary.loc[(row.metric, row.target)]
            assert row.value == pytest.approx(expected.score)
            assert (row.ci_low, row.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    table = pairwise.matrix(pairs, "nasca")
    assert np.allclose(table.loc[languages, languages].to_numpy(), table.loc[languages, languages].to_numpy().T,
                       equal_nan=True)
