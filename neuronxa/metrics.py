"""Alignment metrics between a pivot's and a target's unit representations (rows = parallel units).

Numpy in, float out, float64 inside. A zero vector has no direction: its cosine similarities are NaN, and
a NaN pair is never aligned (a NaN off the diagonal does not compete; a NaN on the diagonal is a miss).
The baselines (CKA, SVCCA, ANC) of representations holding a NaN or an infinity are NaN.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom


def cosine_matrix(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """C[i, j] = cosine(X[i], Y[j]): rows are pivot units, columns target units; NaN for zero vectors."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    x_norm = np.linalg.norm(X, axis=1)
    y_norm = np.linalg.norm(Y, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (X @ Y.T) / np.outer(x_norm, y_norm)


def _diagonal_and_rivals(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The diagonal, each row's largest off-diagonal value and each column's (NaN never wins)."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got shape {C.shape}")
    rivals = np.where(np.isnan(C), -np.inf, C)
    np.fill_diagonal(rivals, -np.inf)
    return np.diag(C), rivals.max(axis=1, initial=-np.inf), rivals.max(axis=0, initial=-np.inf)


def weak_alignment(C: np.ndarray) -> float:
    """Share of units i with C[i,i] > C[i,j] and C[i,i] > C[j,i] for every j != i (a tie is a miss)."""
    diagonal, row_rival, column_rival = _diagonal_and_rivals(C)
    return float(np.mean((diagonal > row_rival) & (diagonal > column_rival)))


def retrieval_accuracy(C: np.ndarray) -> dict[str, float]:
    """Retrieval by nearest neighbour: pivot→target (row i's maximum is at i), target→pivot (column j's
    maximum is at j) and both; ties are misses."""
    diagonal, row_rival, column_rival = _diagonal_and_rivals(C)
    rows, columns = diagonal > row_rival, diagonal > column_rival
    return {
        "pivot_to_target": float(np.mean(rows)),
        "target_to_pivot": float(np.mean(columns)),
        "bidirectional": float(np.mean(rows & columns)),
    }


def chance_pvalue(k: int, n: int) -> float:
    """P(a random n×n matrix scores at least k/n): binomial tail with p = 1/(2n − 1)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return float(binom.sf(k - 1, n, 1.0 / (2 * n - 1)))


def _centred(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X - X.mean(axis=0, keepdims=True)


def _finite(*arrays: np.ndarray) -> bool:
    return all(np.isfinite(np.asarray(array, dtype=np.float64)).all() for array in arrays)


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) over units, from the units' Gram matrices (cheap when width ≫ units)."""
    if not _finite(X, Y):
        return float("nan")
    K = _centred(X) @ _centred(X).T
    L = _centred(Y) @ _centred(Y).T
    denominator = np.linalg.norm(K) * np.linalg.norm(L)
    return float(np.sum(K * L) / denominator) if denominator > 0 else float("nan")


def _top_directions(X: np.ndarray, keep: float) -> np.ndarray:
    """Units projected on the fewest singular directions that explain ``keep`` of the variance."""
    U, S, _ = np.linalg.svd(_centred(X), full_matrices=False)
    variance = S**2
    if variance.sum() == 0:
        return U[:, :0]
    k = int(np.searchsorted(np.cumsum(variance) / variance.sum(), keep - 1e-12) + 1)
    return U[:, :k] * S[:k]


def canonical_correlations(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Canonical correlations of two centred representations: singular values of Qa^T Qb."""
    Qa, _ = np.linalg.qr(_centred(A))
    Qb, _ = np.linalg.qr(_centred(B))
    return np.clip(np.linalg.svd(Qa.T @ Qb, compute_uv=False), 0.0, 1.0)


def svcca(X: np.ndarray, Y: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): SVD keeping ``keep`` of the variance, then the mean canonical correlation."""
    if not _finite(X, Y):
        return float("nan")
    A, B = _top_directions(X, keep), _top_directions(Y, keep)
    if A.shape[1] == 0 or B.shape[1] == 0:
        return float("nan")
    return float(np.mean(canonical_correlations(A, B)))


def anc(X: np.ndarray, Y: np.ndarray) -> float:
    """ANC (Del & Fishel 2022): mean over neurons of the Pearson correlation of a neuron across the two
    languages' units; neurons constant in either language have no correlation and are left out."""
    if not _finite(X, Y):
        return float("nan")
    Xc, Yc = _centred(X), _centred(Y)
    scale = np.linalg.norm(Xc, axis=0) * np.linalg.norm(Yc, axis=0)
    defined = scale > 0
    if not defined.any():
        return float("nan")
    return float(np.mean(np.sum(Xc * Yc, axis=0)[defined] / scale[defined]))
