"""Stage two: per-language, per-layer scores from the cached pooled states, and their layer-pooled summary
with intervals and paired differences. Which metrics there are, what each reads and how each is computed on one
layer is the registry's (``registry``).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from neuronxa.errors import NeuronXAError
from neuronxa.stage_two import metrics, registry, uncertainty
from neuronxa.stage_two.registry import LayerPair, Side

Resampled = dict[tuple[str, str], np.ndarray]


class States(Protocol):
    """What ``score`` reads: a ``StateStore``, or pooled states held in memory."""

    def languages(self) -> list[str]: ...

    def ids(self, language: str) -> list[str]: ...

    def layers(self, language: str, kind: str, pooling: str) -> list[np.ndarray]: ...


def layer_values(X: np.ndarray, Y: np.ndarray, kind: str, *, wanted: list[str], subsets: np.ndarray,
                 pivot: Side | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The wanted metrics' scores that read ``kind`` on one layer, pivot units X against target units Y (same
    order): their values, and their values on each half-sample of the units (``subsets``, see ``uncertainty``).
    ``pivot``: X's side as computed for an earlier target with the same units and half-samples."""
    pair = LayerPair(X, Y, subsets, pivot)
    values: dict[str, float] = {}
    halves: dict[str, np.ndarray] = {}
    for name in wanted:
        for entry in registry.metric(name).scores:
            if entry.representation == kind:
                values[entry.name], halves[entry.name] = entry.measure(pair)
    return values, halves


def _shared_rows(store: States, pivot: str, language: str, *, pivot_ids: dict[str, int]) -> tuple[list, list]:
    """Rows of the units a target shares with the pivot: (pivot rows, target rows), in the target's order."""
    shared = [(pivot_ids[unit], row) for row, unit in enumerate(store.ids(language)) if unit in pivot_ids]
    if len(shared) < 2:
        raise NeuronXAError(f"{language} shares {len(shared)} unit(s) with {pivot}: alignment needs two")
    pivot_rows, target_rows = map(list, zip(*shared))
    return pivot_rows, target_rows


def _pivot_sides(pivot_states: dict[str, list[np.ndarray]], rows: list[int], subsets: np.ndarray,
                 last: dict) -> dict[str, list[Side]]:
    """The pivot's side of every layer for these rows and half-samples: the last target's when they are the
    same (so their Gram matrices and eigenvectors are computed once for all targets), new otherwise."""
    key = (tuple(rows), subsets.shape, subsets.tobytes())
    if key not in last:
        last.clear()
        last[key] = {kind: [Side(states[rows], subsets) for states in layers] for kind, layers in pivot_states.items()}
    return last[key]


def check_targets(store: States, pivot: str, languages: list[str] | None) -> list[str]:
    """The target languages (every cached one but the pivot when None), all of them cached."""
    cached = store.languages()
    if pivot not in cached:
        raise NeuronXAError(f"pivot language {pivot!r} has no cached states (cached: {', '.join(cached)})")
    targets = [lang for lang in (languages or cached) if lang != pivot]
    check_cached(store, targets)
    return targets


def check_cached(store: States, languages: list[str]) -> None:
    """One line naming the languages the cache lacks, if any."""
    cached = set(store.languages())
    missing = [language for language in languages if language not in cached]
    if missing:
        raise NeuronXAError(f"no cached states for {', '.join(missing)}: run stage one for them first")


@threadpool_limits.wrap(limits=1, user_api="blas")   # small matrices: threads would mostly wait on each other
def score(store: States, wanted: list[str], pooling: str, *, pivot: str, languages: list[str] | None = None,
          progress: bool = True, resamples: int = 0, seed: int = 0) -> tuple[pd.DataFrame, Resampled]:
    """Long table (metric, pivot, language, layer, value, n) for every target language and layer (for routing,
    the mixture-of-experts layers), and per (metric, language) the values on ``resamples`` half-samples of the
    units as a (layers, resamples) array. A target's layers are scored side by side on threads (numpy's work
    releases the interpreter; each layer's arithmetic is the same as alone), and BLAS runs on one thread here
    (only here): the matrices are units × units, and BLAS threads would mostly wait on each other."""
    targets = check_targets(store, pivot, languages)
    kinds = registry.representations(wanted)
    pivot_ids = {unit: row for row, unit in enumerate(store.ids(pivot))}
    pivot_states = {kind: store.layers(pivot, kind, pooling) for kind in kinds}
    rows, resampled, last = [], {}, {}
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        for language in tqdm(targets, desc=f"stage two: {pooling}", unit="language", disable=not progress):
            pivot_rows, target_rows = _shared_rows(store, pivot, language, pivot_ids=pivot_ids)
            subsets = uncertainty.half_samples(len(target_rows), resamples, seed)
            sides = _pivot_sides(pivot_states, pivot_rows, subsets, last)
            layers = [(kind, layer, side, target[target_rows]) for kind in kinds
                      for layer, (side, target) in enumerate(zip(sides[kind], store.layers(language, kind, pooling)))
                      if side.states.shape[1]]   # routing on a dense layer of a mixture-of-experts model: none
            scored = pool.map(lambda job: layer_values(job[2].states, job[3], job[0], wanted=wanted,
                                                       subsets=subsets, pivot=job[2]), layers)
            halves: dict[str, list[np.ndarray]] = {}
            for (_, layer, _, _), (values, half) in zip(layers, scored):
                for metric, value in values.items():
                    rows.append((metric, pivot, language, layer, value, len(target_rows)))
                    halves.setdefault(metric, []).append(half[metric])
            resampled.update({(metric, language): np.stack(by_layer) for metric, by_layer in halves.items()})
    return pd.DataFrame(rows, columns=["metric", "pivot", "language", "layer", "value", "n"]), resampled


LAYER_POOLS = ("mean", "max")


def check_layer_pool(layer_pool: str) -> None:
    """A layer pool is mean or max."""
    if layer_pool not in LAYER_POOLS:
        raise NeuronXAError(f"layer_pool must be mean or max, not {layer_pool!r}")


def pool_layers(values: np.ndarray, layer_pool: str) -> np.ndarray:
    """Pool over layers (axis 0) by mean or max, ignoring undefined (NaN) layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every layer undefined: NaN, as pandas gives
        return np.nanmean(values, axis=0) if layer_pool == "mean" else np.nanmax(values, axis=0)


def interval(metric: str, value: float, half_values: np.ndarray | None, *, n: int,
             level: float) -> tuple[float, float]:
    """The interval of a layer-pooled score from its half-sample values by the score's rule (see ``registry``
    and ``uncertainty``); NaN without resamples."""
    if half_values is None or len(half_values) < 2:
        return np.nan, np.nan
    return registry.score(metric).interval(value, half_values, n, level)


def summarise(scores: pd.DataFrame, layer_pool: str = "mean", resampled: Resampled | None = None, *,
              level: float = 0.95) -> pd.DataFrame:
    """Per metric and language: the layer-pooled score with its interval at ``level`` (from ``resampled``),
    the best layer and its value, n, chance p-value.

    The chance p-value is that of the pooled score read as k = round(score · n) aligned units of n.
    """
    check_layer_pool(layer_pool)
    rows = []
    for (metric, pivot, language), group in scores.groupby(["metric", "pivot", "language"], sort=False):
        values, layers = group["value"].to_numpy(float), group["layer"].to_numpy()
        pooled = float(pool_layers(values, layer_pool))
        n = int(group["n"].iloc[0])
        counts_units = registry.score(metric).counts_units
        chance = metrics.chance_pvalue(int(round(pooled * n)), n) if counts_units else np.nan
        halves = (resampled or {}).get((metric, language))
        low, high = interval(metric, pooled, None if halves is None else pool_layers(halves, layer_pool), n=n,
                             level=level)
        best = int(np.nanargmax(values)) if not np.isnan(values).all() else None   # the first best, NaN skipped
        rows.append({"metric": metric, "pivot": pivot, "language": language, "score": pooled,
                     "ci_low": low, "ci_high": high, "layer_pool": layer_pool,
                     "best_layer": -1 if best is None else int(layers[best]),
                     "best_value": np.nan if best is None else float(values[best]), "n": n, "chance_p": chance})
    return pd.DataFrame(rows)


def differences(summary: pd.DataFrame, resampled: Resampled, level: float = 0.95) -> pd.DataFrame:
    """Per language, every pair of alignment scores (NASCA − MEXA, ...): the paired difference of their
    layer-pooled values on the same units, with a normal interval from the same half-samples."""
    present = [metric for metric in registry.of_kind("alignment") if metric in set(summary.metric)]
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    table = summary.set_index(["metric", "language"])
    layer_pool = summary.layer_pool.iloc[0] if len(summary) else "mean"
    rows = []
    for a, b in pairs:
        for language in summary[summary.metric == a].language:
            value = table.loc[(a, language), "score"] - table.loc[(b, language), "score"]
            n = int(table.loc[(a, language), "n"])
            halves = [resampled.get((metric, language)) for metric in (a, b)]
            half = None if any(h is None for h in halves) else (pool_layers(halves[0], layer_pool)
                                                                 - pool_layers(halves[1], layer_pool))
            low, high = (np.nan, np.nan) if half is None else uncertainty.normal_interval(value, half, n, level)
            rows.append({"metric_a": a, "metric_b": b, "pivot": table.loc[(a, language), "pivot"],
                         "language": language, "difference": value, "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=["metric_a", "metric_b", "pivot", "language", "difference", "ci_low",
                                       "ci_high", "n"])
