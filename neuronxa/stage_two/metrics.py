"""Alignment metrics between a pivot's and a target's unit representations (rows = parallel units).

Numpy in, float out, float64 inside. A zero vector has no direction: its cosine similarities are NaN, and
a NaN pair is never aligned (a NaN off the diagonal does not compete; a NaN on the diagonal is a miss).
The baselines (CKA, SVCCA, ANC) of representations holding a NaN or an infinity are NaN.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

from neuronxa.errors import NeuronXAError


def cosine_matrix(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """C[i, j] = cosine(X[i], Y[j]): rows are pivot units, columns target units; NaN for zero vectors."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    x_norm = np.linalg.norm(X, axis=1)
    y_norm = np.linalg.norm(Y, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (X @ Y.T) / np.outer(x_norm, y_norm)


def beaten(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Who beats unit i: ``by_row[..., i, j]`` when j ≠ i and C[i, j] ≥ C[i, i], ``by_column[..., i, j]`` when
    j ≠ i and C[j, i] ≥ C[i, i] (a tie is a miss; a NaN rival never beats; a NaN diagonal is beaten by itself).
    ``C`` may carry leading batch axes: ``(..., n, n)``."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim < 2 or C.shape[-1] != C.shape[-2]:
        raise NeuronXAError(f"expected square similarity matrices (units × the same units), got shape {C.shape}")
    diagonal = np.diagonal(C, axis1=-2, axis2=-1)[..., :, None]
    with np.errstate(invalid="ignore"):
        by_row, by_column = C >= diagonal, np.swapaxes(C, -1, -2) >= diagonal
    index = np.arange(C.shape[-1])
    by_row[..., index, index] = by_column[..., index, index] = np.isnan(diagonal[..., 0])
    return by_row, by_column


def chance_pvalue(k: int, n: int) -> float:
    """P(a random n×n matrix scores at least k/n): binomial tail with p = 1/(2n − 1)."""
    if n < 1 or not 0 <= k <= n:
        raise NeuronXAError(f"chance level needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return float(binom.sf(k - 1, n, 1.0 / (2 * n - 1)))


def _finite(*arrays: np.ndarray) -> bool:
    return all(np.isfinite(np.asarray(array, dtype=np.float64)).all() for array in arrays)


def double_centred(K: np.ndarray) -> np.ndarray:
    """H K H for Gram matrices (..., n, n): the Gram matrix of the column-centred representation."""
    K = np.asarray(K, np.float64)
    return (K - K.mean(axis=-1, keepdims=True) - K.mean(axis=-2, keepdims=True)
            + K.mean(axis=(-2, -1), keepdims=True))


def cka_of_grams(K: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Linear CKA from the units' (uncentred) Gram matrices; leading batch axes allowed; NaN where undefined."""
    return cka_of_centred(double_centred(K), double_centred(L))


def cka_of_centred(K: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Linear CKA from double-centred Gram matrices (``double_centred``); NaN where undefined."""
    denominator = np.linalg.norm(K, axis=(-2, -1)) * np.linalg.norm(L, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, np.sum(K * L, axis=(-2, -1)) / denominator, np.nan)


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) over units, from the units' Gram matrices (cheap when width ≫ units)."""
    if not _finite(X, Y):
        return float("nan")
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return float(cka_of_grams(X @ X.T, Y @ Y.T))


Directions = tuple[np.ndarray, np.ndarray]   # eigenvectors of a centred Gram matrix, and how many are kept


def kept_directions(K: np.ndarray, keep: float = 0.99) -> Directions:
    """From a centred Gram matrix of units (..., n, n): its eigenvectors, largest first (the left singular
    vectors of the centred units), and how many explain ``keep`` of the variance (0 where there is none)."""
    values, vectors = np.linalg.eigh(K)
    variance, vectors = np.clip(values[..., ::-1], 0.0, None), vectors[..., ::-1]
    total = variance.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.sum(np.cumsum(variance, axis=-1) / total < keep - 1e-12, axis=-1) + 1
    return vectors, np.where(total[..., 0] > 0, kept, 0)


def svcca_of_grams(K: np.ndarray, L: np.ndarray, keep: float = 0.99) -> np.ndarray:
    """SVCCA from the units' (uncentred) Gram matrices, leading batch axes allowed; NaN where a side has no
    variance. The canonical correlations of the two kept subspaces are the singular values of Ua^T Ub, Ua and
    Ub the kept left singular vectors (orthonormal bases of the projections), so the Gram matrices suffice."""
    return svcca_of_directions(*(kept_directions(double_centred(G), keep) for G in (K, L)))


def svcca_of_directions(a: Directions, b: Directions) -> np.ndarray:
    """SVCCA from each side's ``kept_directions``: the mean of the top canonical correlations."""
    (Ua, ka), (Ub, kb) = a, b
    Ua = Ua * (np.arange(Ua.shape[-1]) < ka[..., None])[..., None, :]
    Ub = Ub * (np.arange(Ub.shape[-1]) < kb[..., None])[..., None, :]
    correlations = np.clip(np.linalg.svd(np.swapaxes(Ua, -1, -2) @ Ub, compute_uv=False), 0.0, 1.0)
    counted = np.minimum(ka, kb)
    top = np.where(np.arange(correlations.shape[-1]) < counted[..., None], correlations, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counted > 0, top.sum(axis=-1) / counted, np.nan)


def svcca(X: np.ndarray, Y: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): SVD keeping ``keep`` of the variance, then the mean canonical correlation."""
    if not _finite(X, Y):
        return float("nan")
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return float(svcca_of_grams(X @ X.T, Y @ Y.T, keep))


def _correlations_in_place(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``neuron_correlations`` of two fresh float64 arrays, which it overwrites (centred, then multiplied)."""
    for side in (X, Y):
        side -= np.add.reduce(side, axis=-2, keepdims=True) / side.shape[-2]
    scale = np.sqrt(np.add.reduce(X * X, axis=-2)) * np.sqrt(np.add.reduce(Y * Y, axis=-2))
    defined = scale > 0
    X *= Y
    with np.errstate(divide="ignore", invalid="ignore"):
        per_neuron = np.where(defined, np.add.reduce(X, axis=-2) / scale, 0.0)
        return np.where(defined.any(axis=-1), per_neuron.sum(axis=-1) / defined.sum(axis=-1), np.nan)


def neuron_correlations(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """ANC over units (axis −2) for representations with leading batch axes: the mean over neurons of each
    neuron's Pearson correlation across the two languages' units, neurons constant in either left out."""
    return _correlations_in_place(np.array(X, np.float64), np.array(Y, np.float64))


CACHED_VALUES = 32768   # float64 values (256 KiB) per working array: what a core's L2 cache holds


def subset_neuron_correlations(X: np.ndarray, Y: np.ndarray, subsets: np.ndarray, chunk: int | None = None
                               ) -> np.ndarray:
    """``neuron_correlations`` of X and Y restricted to each subset of their rows (units): (resamples,). A few
    subsets at a time (``chunk``; None: as many as keep each working array within ``CACHED_VALUES``), gathered
    straight into float64, so that the working arrays stay in the CPU's cache."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    chunk = chunk or max(1, CACHED_VALUES // max(1, subsets.shape[-1] * X.shape[-1]))
    values = np.empty(len(subsets))
    for start in range(0, len(subsets), chunk):
        part = subsets[start:start + chunk]
        values[start:start + chunk] = _correlations_in_place(X[part], Y[part])
    return values


def anc(X: np.ndarray, Y: np.ndarray) -> float:
    """ANC (Del & Fishel 2022): mean over neurons of the Pearson correlation of a neuron across the two
    languages' units; neurons constant in either language have no correlation and are left out."""
    if not _finite(X, Y):
        return float("nan")
    return float(neuron_correlations(X, Y))
