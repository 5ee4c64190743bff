"""Every metric against a hand-computed case and an independent (loop or textbook) implementation."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from helpers import loop_cosine, loop_weak_alignment, retrieval_accuracy, weak_alignment
from neuronxa.errors import NeuronXAError
from neuronxa.stage_two.metrics import (anc, chance_pvalue, cosine_matrix, linear_cka, neuron_correlations,
                                       subset_neuron_correlations, svcca)
from neuronxa.stage_two.uncertainty import half_samples


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator per test, so that a test's data does not depend on which tests ran before it."""
    return np.random.default_rng(7)


def loop_retrieval(C):
    n = len(C)
    rows = [all(C[i][i] > C[i][j] for j in range(n) if j != i) for i in range(n)]
    cols = [all(C[j][j] > C[i][j] for i in range(n) if i != j) for j in range(n)]
    return {"pivot_to_target": sum(rows) / n, "target_to_pivot": sum(cols) / n,
            "bidirectional": sum(r and c for r, c in zip(rows, cols)) / n}


def test_cosine_by_hand_and_by_loop(rng):
    X = np.array([[1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    C = cosine_matrix(X, Y)
    np.testing.assert_allclose(C[:, :2], [[0, 1], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    assert np.isnan(C[:, 2]).all()
    X, Y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(cosine_matrix(X, Y), loop_cosine(X, Y))


def test_weak_alignment_by_hand():
    C = np.array([[0.9, 0.1, 0.2],
                  [0.3, 0.5, 0.6],    # unit 1: its row has 0.6 > 0.5: a miss
                  [0.2, 0.4, 0.7]])
    assert weak_alignment(C) == pytest.approx(2 / 3)
    C[0, 1] = 0.9                    # a tie with the diagonal is a miss
    assert weak_alignment(C) == pytest.approx(1 / 3)
    C[1, 0] = 0.95                   # column 0 now has a larger value than C[0, 0]
    assert weak_alignment(C) == pytest.approx(1 / 3)


def test_weak_alignment_matches_the_loop_on_random_matrices(rng):
    for n in (2, 3, 10, 40):
        C = rng.normal(size=(n, n)) + np.eye(n) * rng.uniform(0, 2)
        assert weak_alignment(C) == pytest.approx(loop_weak_alignment(C.tolist()))
        C[rng.random((n, n)) < 0.1] = np.nan
        assert weak_alignment(C) == pytest.approx(loop_weak_alignment(C.tolist()))


def test_nan_never_counts_as_aligned_and_never_crashes():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    C = cosine_matrix(X, X)                     # unit 2 is a zero vector in both languages
    assert weak_alignment(C) == pytest.approx(2 / 3)
    assert retrieval_accuracy(C)["bidirectional"] == pytest.approx(2 / 3)
    assert weak_alignment(np.full((3, 3), np.nan)) == 0.0
    assert weak_alignment(cosine_matrix(np.zeros((4, 3)), np.zeros((4, 3)))) == 0.0


def test_identical_representations_are_perfectly_aligned_unless_units_repeat(rng):
    X = rng.normal(size=(8, 16))
    assert weak_alignment(cosine_matrix(X, X)) == 1.0
    X[3] = X[5]                                  # two identical units tie: both miss
    assert weak_alignment(cosine_matrix(X, X)) == pytest.approx(6 / 8)


def test_retrieval_by_hand_and_by_loop(rng):
    C = np.array([[0.9, 0.8, 0.1],
                  [0.95, 0.5, 0.2],   # row 1 retrieves 0; columns 0 and 1 peak off the diagonal
                  [0.1, 0.2, 0.3]])
    assert retrieval_accuracy(C) == pytest.approx(
        {"pivot_to_target": 2 / 3, "target_to_pivot": 1 / 3, "bidirectional": 1 / 3})
    for n in (2, 5, 30):
        C = rng.normal(size=(n, n)) + np.eye(n)
        assert retrieval_accuracy(C) == pytest.approx(loop_retrieval(C.tolist()))
        assert retrieval_accuracy(C)["bidirectional"] == pytest.approx(weak_alignment(C))


def test_chance_pvalue_reproduces_the_papers_value():
    assert chance_pvalue(5, 100) == pytest.approx(0.00016, abs=5e-6)
    assert chance_pvalue(0, 100) == 1.0
    p = 1 / 199
    assert chance_pvalue(2, 100) == pytest.approx(1 - (1 - p) ** 100 - 100 * p * (1 - p) ** 99)


def test_linear_cka_by_hand_and_against_the_feature_space_formula(rng):
    x, y = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25)           # 1-D: squared Pearson r = (1/2)^2
    X, Y = rng.normal(size=(12, 5)), rng.normal(size=(12, 7))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expected = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(X, Y) == pytest.approx(expected)
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(X, 3 * X @ Q + 1) == pytest.approx(1.0)  # invariant to rotation, scale and shift


def textbook_cca(A, B):
    """Canonical correlations from the covariance matrices: sqrt(eig(Saa^-1 Sab Sbb^-1 Sba))."""
    A, B = A - A.mean(0), B - B.mean(0)
    Saa, Sbb, Sab = A.T @ A, B.T @ B, A.T @ B
    M = np.linalg.solve(Saa, Sab) @ np.linalg.solve(Sbb, Sab.T)
    values = np.sort(np.clip(np.linalg.eigvals(M).real, 0, 1))[::-1]
    return np.sqrt(values[: min(A.shape[1], B.shape[1])])


def test_svcca_by_hand_and_against_textbook_cca(rng):
    x, y = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [3.0], [2.0]])
    assert svcca(x, y) == pytest.approx(0.5)                  # 1-D: |Pearson r|
    X = rng.normal(size=(40, 4)) @ np.diag([5, 3, 1, 1e-4])   # the last direction holds < 1% of variance
    Y = X @ rng.normal(size=(4, 3)) + 0.5 * rng.normal(size=(40, 3))
    U, S, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    A = (U * S)[:, :3]                                        # 99% of variance: 3 directions
    V, T, _ = np.linalg.svd(Y - Y.mean(0), full_matrices=False)
    k = int(np.searchsorted(np.cumsum(T**2) / np.sum(T**2), 0.99 - 1e-12) + 1)
    assert svcca(X, Y) == pytest.approx(np.mean(textbook_cca(A, (V * T)[:, :k])))


def test_anc_by_hand_and_by_loop(rng):
    X = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    Y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert anc(X, Y) == pytest.approx(0.0)                    # correlations +1 and -1
    X, Y = rng.normal(size=(15, 6)), rng.normal(size=(15, 6))
    X[:, 2] = 1.0                                             # a constant (dead) neuron is left out
    expected = np.mean([pearsonr(X[:, k], Y[:, k])[0] for k in range(6) if k != 2])
    assert anc(X, Y) == pytest.approx(expected)
    assert math.isnan(anc(np.ones((4, 3)), Y[:4, :3]))


def former_neuron_correlations(X, Y):
    """The half-samples' ANC as it was computed before (all subsets gathered at once, then numpy's mean and
    norm), restated: the chunked, in-place form must give the same bits."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    Xc, Yc = X - X.mean(axis=-2, keepdims=True), Y - Y.mean(axis=-2, keepdims=True)
    scale = np.linalg.norm(Xc, axis=-2) * np.linalg.norm(Yc, axis=-2)
    defined = scale > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        per_neuron = np.where(defined, np.sum(Xc * Yc, axis=-2) / scale, 0.0)
        return np.where(defined.any(axis=-1), per_neuron.sum(axis=-1) / defined.sum(axis=-1), np.nan)


@pytest.mark.parametrize("n", [5, 24, 31])
def test_half_sample_anc_in_chunks_is_bitwise_the_former_computation(rng, n):
    X, Y = rng.normal(size=(n, 40)).astype(np.float32), rng.normal(size=(n, 40)).astype(np.float32)
    X[:, 3], Y[:, 7] = 2.0, 0.0                               # constant neurons, left out
    subsets = half_samples(n, 37, seed=3)
    expected = former_neuron_correlations(X[subsets], Y[subsets])
    for chunk in (None, 1, 16, 37, 100):   # None: as many as fit the cache (here all 37)
        np.testing.assert_array_equal(subset_neuron_correlations(X, Y, subsets, chunk), expected)
    np.testing.assert_array_equal(neuron_correlations(X, Y), former_neuron_correlations(X, Y))
    assert subset_neuron_correlations(X, Y, half_samples(n, 0)).shape == (0,)
    constant = np.ones_like(X)
    assert np.isnan(subset_neuron_correlations(constant, Y, subsets)).all()


def test_nan_inputs_give_nan_baselines_and_no_alignment_for_the_nan_unit(rng):
    X, Y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    Y[:] = X + 0.01 * Y                                       # well aligned ...
    X[2, 1] = np.nan                                          # ... but unit 2 of the pivot holds a NaN
    assert weak_alignment(cosine_matrix(X, Y)) == pytest.approx(5 / 6)
    assert retrieval_accuracy(cosine_matrix(X, Y))["pivot_to_target"] == pytest.approx(5 / 6)
    for baseline in (linear_cka, svcca, anc):
        assert math.isnan(baseline(X, Y))
        assert math.isnan(baseline(np.full((6, 5), np.inf), Y))
    assert math.isnan(svcca(np.zeros((6, 5)), Y)) and math.isnan(linear_cka(np.zeros((6, 5)), Y))


def test_bad_shapes_and_counts_are_one_clear_error():
    with pytest.raises(NeuronXAError, match="square similarity matrices.*shape \\(2, 3\\)"):
        weak_alignment(np.zeros((2, 3)))
    with pytest.raises(NeuronXAError, match="k=4, n=3"):
        chance_pvalue(4, 3)
