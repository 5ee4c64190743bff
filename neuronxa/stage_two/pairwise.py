"""Every language as pivot: the alignment scores of every pair of corpus languages, from
the states of all languages stacked per layer, so that a pivot's comparisons with every target are a few matrix
products rather than a loop of pairs.

μ is symmetric (scoring b against a transposes the cosine matrix, which swaps the row and the column test), so
each unordered pair is computed once and written both ways.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import metrics, registry, uncertainty
from neuronxa.stage_two.scoring import check_cached, interval, pool_layers


def shared_units(store: StateStore, languages: list[str]) -> tuple[list[str], dict[str, list[int]]]:
    """The units every language has, in the first language's order, and each language's rows of them."""
    ids = {language: store.ids(language) for language in languages}
    common = set.intersection(*(set(units) for units in ids.values()))
    order = [unit for unit in ids[languages[0]] if unit in common]
    if len(order) < 2:
        raise NeuronXAError(f"the {len(languages)} languages share {len(order)} unit(s): alignment needs two")
    rows = {language: [units.index(unit) for unit in order] for language, units in ids.items()}
    return order, rows


def stacked(store: StateStore, languages: list[str], rows: dict[str, list[int]], kind: str, pooling: str,
            layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(languages, units, width) states of one layer in float64, and their norms (languages, units)."""
    states = np.stack([store.read(language, kind, pooling, layer)[rows[language]] for language in languages])
    states = states.astype(np.float64)
    return states, np.linalg.norm(states, axis=-1)


def pivot_block(states: np.ndarray, norms: np.ndarray, pivot: int,
                subsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ of language ``pivot`` against every language from ``pivot`` on: values (targets,) and half-sample
    values (targets, resamples)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        targets = states[pivot:]
        products = states[pivot] @ targets.reshape(-1, targets.shape[-1]).T   # one matrix product: (n, targets·n)
        C = products.reshape(len(states[pivot]), len(targets), -1).transpose(1, 0, 2) / (
            norms[pivot][None, :, None] * norms[pivot:][:, None, :])
    by_row, by_column = metrics.beaten(C)
    beaten = by_row | by_column
    return (~beaten.any(axis=-1)).mean(axis=-1), uncertainty.subset_shares(beaten, subsets)


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
    units, rows = shared_units(store, languages)
    n, k = len(units), len(languages)
    subsets = uncertainty.half_samples(n, resamples, seed)
    n_layers, frames = store.n_layers(languages[0]), []
    for metric in chosen:
        (kind,) = registry.metric(metric).representations
        values, halves = np.empty((n_layers, k, k)), np.empty((n_layers, k, k, resamples))
        for layer in tqdm(range(n_layers), desc=f"pairwise {metric}", unit="layer", disable=not progress):
            states, norms = stacked(store, languages, rows, kind, pooling, layer)
            for pivot in range(k):
                block, half = pivot_block(states, norms, pivot, subsets)
                values[layer, pivot, pivot:], values[layer, pivot:, pivot] = block, block
                halves[layer, pivot, pivot:], halves[layer, pivot:, pivot] = half, half
        frames.append(_pooled_pairs(metric, languages, pool_layers(values, layer_pool),
                                    halves=pool_layers(halves, layer_pool), n=n, level=level))
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
