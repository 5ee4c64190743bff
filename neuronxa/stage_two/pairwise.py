"""Every language as pivot: the alignment scores of every pair of corpus languages at once.

Per layer, the states of all languages are normalised once and their cosines computed in float32 by a few large
matrix products (a block of pivots against every language from the first of them on). Float32 decides almost
every comparison with the diagonal as float64 does: its cosines of unit vectors of width w were measured within
half of √w·2⁻²⁴ of the float64 ones (width 640 and 2048), so a comparison closer than √w·2⁻²⁴ is settled again
in float64, as ``metrics.cosine_matrix`` computes it (the worst case, w·2⁻²⁴, is not guaranteed). The
half-sample shares then count, for the units some rival beats, the beaters inside each half-sample with one
matrix product per pivot. μ is symmetric (scoring b against a transposes the cosine matrix, which swaps the row
and the column test), so each unordered pair is computed once and written both ways.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import registry, uncertainty
from neuronxa.stage_two.scoring import check_cached, check_layer_pool, interval

PIVOT_ROWS = 1024   # units of the pivots whose cosines one matrix product computes (memory: rows × all units)


def shared_units(store: StateStore, languages: list[str]) -> tuple[list[str], dict[str, list[int]]]:
    """The units every language has, in the first language's order, and each language's rows of them."""
    ids = {language: store.ids(language) for language in languages}
    common = set.intersection(*(set(units) for units in ids.values()))
    order = [unit for unit in ids[languages[0]] if unit in common]
    if len(order) < 2:
        raise NeuronXAError(f"the {len(languages)} languages share {len(order)} unit(s): alignment needs two")
    rows = {language: [units.index(unit) for unit in order] for language, units in ids.items()}
    return order, rows


def stacked(store: StateStore, languages: list[str], rows: dict[str, list[int]], kind: str,
            pooling: str) -> np.ndarray:
    """(languages, layers, units, width) states of every layer as stored (half precision where it fits)."""
    return np.stack([store.array(language, f"{kind}/{pooling}")[:, rows[language]] for language in languages])


class Layer:
    """One layer's states of every language (languages, units, width): float32 unit vectors (NaN for a zero
    vector), float64 norms, and each pair's cosines, settled exactly where float32 cannot tell."""

    def __init__(self, states: np.ndarray) -> None:
        self.states = states
        wide = states.astype(np.float64)
        self.norms = np.linalg.norm(wide, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.unit = (wide / self.norms[..., None]).astype(np.float32)
        self.tolerance = np.sqrt(states.shape[-1]) * 2.0**-24   # float32 errors measured: under half of it

    def cosines(self, first: int, last: int) -> np.ndarray:
        """Float32 cosines of pivots first..last-1 with every language from ``first`` on: (pivots, targets, n, n),
        ``[a, b, i, j]`` = cos(pivot a's unit i, target b's unit j)."""
        k, n, width = self.unit.shape
        products = self.unit[first:last].reshape(-1, width) @ self.unit[first:].reshape(-1, width).T
        return products.reshape(last - first, n, k - first, n).transpose(0, 2, 1, 3)

    def exact(self, pivot: int, targets: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Float64 cosines of the pivot's units ``rows`` with the targets' units ``columns`` (element-wise)."""
        products = np.einsum("mw,mw->m", self.states[pivot, rows], self.states[targets, columns], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return products / (self.norms[pivot, rows] * self.norms[targets, columns])

    def beaten(self, pivot: int, C: np.ndarray) -> np.ndarray:
        """Who beats each unit of the pivot against each target from the pivot on (targets, n, n), as
        ``metrics.beaten`` of the float64 cosine matrix: by row or by column, a tie a miss, a NaN diagonal beaten."""
        diagonal = np.diagonal(C, axis1=-2, axis2=-1)[..., :, None]
        beaten = []
        for oriented, transposed in ((C, False), (np.swapaxes(C, -1, -2), True)):
            with np.errstate(invalid="ignore"):
                beats = oriented >= diagonal
                target, i, j = np.nonzero(np.abs(oriented - diagonal) <= self.tolerance)
            target, i, j = (axis[i != j] for axis in (target, i, j))    # the diagonal is settled below
            if len(target):
                rows, columns = (j, i) if transposed else (i, j)
                beats[target, i, j] = (self.exact(pivot, pivot + target, rows, columns)
                                       >= self.exact(pivot, pivot + target, i, i))
            beaten.append(beats)
        either, index = beaten[0] | beaten[1], np.arange(C.shape[-1])
        either[..., index, index] = np.isnan(diagonal[..., 0])
        return either


def half_shares(beaten: np.ndarray, members: np.ndarray, size: int) -> np.ndarray:
    """``uncertainty.subset_shares`` of each target's beaten matrix (targets, n, n) for the half-samples' member
    masks (resamples, n) of ``size`` units each: (targets, resamples). Only units some rival beats can fail, so
    only their rows are counted."""
    targets = len(beaten)
    target, unit = np.nonzero(beaten.any(axis=-1))
    beaters = members @ beaten[target, unit].T.astype(np.float32)                  # (resamples, beaten units)
    failing = np.cumsum((beaters > 0) & (members[:, unit] > 0), axis=1, dtype=np.int64)
    failing = np.concatenate([np.zeros((len(members), 1), np.int64), failing], axis=1)
    bounds = np.searchsorted(target, np.arange(targets + 1))
    return ((size - (failing[:, bounds[1:]] - failing[:, bounds[:-1]])) / max(size, 1)).T


def one_layer(layer: Layer, subsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ of every pair of languages on one layer (languages, languages) and on each half-sample of the units
    (languages, languages, resamples)."""
    k, n = layer.norms.shape
    members = np.zeros((len(subsets), n), dtype=np.float32)
    np.put_along_axis(members, subsets, 1.0, axis=1)
    values, halves = np.empty((k, k)), np.empty((k, k, len(subsets)))
    step = max(1, PIVOT_ROWS // n)
    for first in range(0, k, step):
        cosines = layer.cosines(first, min(first + step, k))
        for pivot in range(first, min(first + step, k)):
            beaten = layer.beaten(pivot, cosines[pivot - first, pivot - first:])
            block, half = (~beaten.any(axis=-1)).mean(axis=-1), half_shares(beaten, members, subsets.shape[1])
            values[pivot, pivot:], values[pivot:, pivot] = block, block
            halves[pivot, pivot:], halves[pivot:, pivot] = half, half
    return values, halves


def layer_pooled(states: np.ndarray, subsets: np.ndarray, *, layer_pool: str,
                 progress: bool | str = False) -> tuple[np.ndarray, np.ndarray]:
    """μ of every pair pooled over the layers of ``states`` (languages, layers, units, width) by ``layer_pool``
    (mean or max; μ is never undefined), with its half-sample values; ``progress``: a bar's title."""
    n_layers = states.shape[1]
    combine = np.add if layer_pool == "mean" else np.maximum
    pooled = one_layer(Layer(states[:, 0]), subsets)
    for index in tqdm(range(1, n_layers), desc=str(progress), unit="layer", disable=not progress):
        pooled = tuple(combine(total, value) for total, value in zip(pooled, one_layer(Layer(states[:, index]),
                                                                                     subsets)))
    return (pooled[0] / n_layers, pooled[1] / n_layers) if layer_pool == "mean" else pooled


def chosen_metrics(wanted: list[str]) -> list[str]:
    """The alignment scores among the wanted metrics: what pairwise scoring computes (none is an error)."""
    alignment = registry.of_kind("alignment")
    chosen = [metric for metric in wanted if metric in alignment]
    if not chosen:
        raise NeuronXAError(f"pairwise scoring computes the alignment scores {', '.join(alignment)}: none of them "
                            f"among {', '.join(wanted) or 'no metrics'}")
    return chosen


def pairwise(store: StateStore, wanted: list[str], pooling: str, *, languages: list[str], layer_pool: str = "mean",
             resamples: int = 0, seed: int = 0, level: float = 0.95, progress: bool = True) -> pd.DataFrame:
    """Long table (metric, pivot, target, value, ci_low, ci_high, n) of the layer-pooled alignment scores of
    every ordered pair of distinct languages."""
    chosen = chosen_metrics(wanted)
    check_cached(store, languages)
    check_layer_pool(layer_pool)
    units, rows = shared_units(store, languages)
    subsets = uncertainty.half_samples(len(units), resamples, seed)
    frames = []
    for metric in chosen:
        (kind,) = registry.metric(metric).representations
        values, halves = layer_pooled(stacked(store, languages, rows, kind, pooling), subsets,
                                      layer_pool=layer_pool, progress=progress and f"pairwise {metric}")
        frames.append(_pooled_pairs(metric, languages, values, halves=halves, n=len(units), level=level))
    return pd.concat(frames, ignore_index=True)


def _pooled_pairs(metric: str, languages: list[str], values: np.ndarray, *, halves: np.ndarray, n: int,
                  level: float) -> pd.DataFrame:
    """Rows of the ordered pairs of distinct languages with their intervals."""
    rows = []
    for a, pivot in enumerate(languages):
        for b, target in enumerate(languages):
            if a != b:
                low, high = interval(metric, values[a, b], halves[a, b], n=n, level=level)
                rows.append((metric, pivot, target, float(values[a, b]), low, high, n))
    return pd.DataFrame(rows, columns=["metric", "pivot", "target", "value", "ci_low", "ci_high", "n"])


def matrix(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """pivot × target table of one metric (the diagonal, a language against itself, left empty)."""
    return pairs[pairs.metric == metric].pivot(index="pivot", columns="target", values="value")
