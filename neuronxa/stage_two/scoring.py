"""Stage two: per-language, per-layer scores from the cached pooled states, and their layer-pooled summary.

Metrics and the representation each reads:
``nasca`` (NAS), ``navca`` (NAV), ``mexa`` (hidden states) — the weak alignment score μ of the cosine matrix;
``cka``, ``svcca``, ``anc`` (hidden states) — the embedding baselines;
``retrieval`` — pivot→target, target→pivot and bidirectional accuracy, on NAS and on hidden states.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.forward import PooledStates, pooled_states, split_states
from neuronxa.stage_one.pooling import check_pooling
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import metrics, uncertainty

ALIGNMENT = {"nasca": "nas", "navca": "nav", "mexa": "hidden"}
BASELINES = {"cka": metrics.linear_cka, "svcca": metrics.svcca, "anc": metrics.anc}
RETRIEVAL_REPRESENTATIONS = ("nas", "hidden")
METRICS = (*ALIGNMENT, *BASELINES, "retrieval")


def representations(metric: str) -> tuple[str, ...]:
    """The state kinds a metric reads."""
    if metric in ALIGNMENT:
        return (ALIGNMENT[metric],)
    if metric in BASELINES:
        return ("hidden",)
    if metric == "retrieval":
        return RETRIEVAL_REPRESENTATIONS
    raise NeuronXAError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")


def _baseline(metric: str, X: np.ndarray, Y: np.ndarray, subsets: np.ndarray) -> tuple[float, np.ndarray]:
    """A baseline's value on all units and on each half-sample of them (CKA and SVCCA from one pair of Gram
    matrices, sliced per half-sample); NaN where a representation holds a NaN or an infinity."""
    if not np.isfinite(X).all() or not np.isfinite(Y).all():
        return float("nan"), np.full(len(subsets), np.nan)
    if metric == "anc":
        return metrics.anc(X, Y), metrics.neuron_correlations(X[subsets], Y[subsets])
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    K, L = X @ X.T, Y @ Y.T
    of_grams = metrics.cka_of_grams if metric == "cka" else metrics.svcca_of_grams
    return float(of_grams(K, L)), of_grams(uncertainty.submatrices(K, subsets), uncertainty.submatrices(L, subsets))


def layer_values(X: np.ndarray, Y: np.ndarray, kind: str, wanted: list[str],
                 subsets: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The wanted metrics on one layer, pivot units X against target units Y (same order): their values,
    and their values on each half-sample of the units (``subsets``, see ``uncertainty``)."""
    values: dict[str, float] = {}
    halves: dict[str, np.ndarray] = {}
    if any(ALIGNMENT.get(m) == kind for m in wanted) or "retrieval" in wanted:
        by_row, by_column = metrics.beaten(metrics.cosine_matrix(X, Y))
        shares = {direction: (float(np.mean(~beaten.any(axis=-1))), uncertainty.subset_shares(beaten, subsets))
                  for direction, beaten in (("pivot_to_target", by_row), ("target_to_pivot", by_column),
                                            ("bidirectional", by_row | by_column))}
    for metric in wanted:
        if ALIGNMENT.get(metric) == kind:
            values[metric], halves[metric] = shares["bidirectional"]
        elif metric in BASELINES and kind == "hidden":
            values[metric], halves[metric] = _baseline(metric, X, Y, subsets)
        elif metric == "retrieval" and kind in RETRIEVAL_REPRESENTATIONS:
            for direction, (value, half) in shares.items():
                values[f"retrieval.{kind}.{direction}"], halves[f"retrieval.{kind}.{direction}"] = value, half
    return values, halves


def _shared_rows(store: StateStore, pivot: str, language: str, pivot_ids: dict[str, int]) -> tuple[list, list]:
    """Rows of the units a target shares with the pivot: (pivot rows, target rows), in the target's order."""
    shared = [(pivot_ids[unit], row) for row, unit in enumerate(store.ids(language)) if unit in pivot_ids]
    if len(shared) < 2:
        raise NeuronXAError(f"{language} shares {len(shared)} unit(s) with {pivot}: alignment needs two")
    pivot_rows, target_rows = map(list, zip(*shared))
    return pivot_rows, target_rows


def check_targets(store: StateStore, pivot: str, languages: list[str] | None) -> list[str]:
    """The target languages (every cached one but the pivot when None), all of them cached."""
    cached = store.languages()
    if pivot not in cached:
        raise NeuronXAError(f"pivot language {pivot!r} has no cached states (cached: {', '.join(cached)})")
    targets = [lang for lang in (languages or cached) if lang != pivot]
    check_cached(store, targets)
    return targets


def check_cached(store: StateStore, languages: list[str]) -> None:
    """One line naming the languages the cache lacks, if any."""
    missing = [language for language in languages if language not in store.languages()]
    if missing:
        raise NeuronXAError(f"no cached states for {', '.join(missing)}: run stage one for them first")


Resampled = dict[tuple[str, str], np.ndarray]


class StatesInMemory:
    """Pooled states held in memory (one ``PooledStates`` per language, units in the same order), read as
    ``score`` reads a ``StateStore``."""

    def __init__(self, states: dict[str, PooledStates]) -> None:
        self.states = states

    def languages(self) -> list[str]:
        return list(self.states)

    def ids(self, language: str) -> list[str]:
        return [str(unit) for unit in range(len(self.states[language].n_tokens))]

    def read(self, language: str, kind: str, pooling: str, layer: int | slice = slice(None)) -> np.ndarray:
        return self.states[language][kind][pooling][layer]


def score(store: StateStore | StatesInMemory, wanted: list[str], pooling: str, pivot: str,
          languages: list[str] | None = None, progress: bool = True, resamples: int = 0,
          seed: int = 0) -> tuple[pd.DataFrame, Resampled]:
    """Long table (metric, pivot, language, layer, value, n) for every target language and layer, and per
    (metric, language) the values on ``resamples`` half-samples of the units as a (layers, resamples) array."""
    targets = check_targets(store, pivot, languages)
    kinds = sorted({kind for metric in wanted for kind in representations(metric)})
    pivot_ids = {unit: row for row, unit in enumerate(store.ids(pivot))}
    pivot_states = {kind: store.read(pivot, kind, pooling) for kind in kinds}
    rows, resampled = [], {}
    for language in tqdm(targets, desc=f"stage two: {pooling}", unit="language", disable=not progress):
        pivot_rows, target_rows = _shared_rows(store, pivot, language, pivot_ids)
        subsets = uncertainty.half_samples(len(target_rows), resamples, seed)
        halves: dict[str, list[np.ndarray]] = {}
        for kind in kinds:
            for layer in range(pivot_states[kind].shape[0]):
                X = pivot_states[kind][layer, pivot_rows]
                Y = store.read(language, kind, pooling, layer)[target_rows]
                values, half = layer_values(X, Y, kind, wanted, subsets)
                for metric, value in values.items():
                    rows.append((metric, pivot, language, layer, value, len(target_rows)))
                    halves.setdefault(metric, []).append(half[metric])
        resampled.update({(metric, language): np.stack(by_layer) for metric, by_layer in halves.items()})
    return pd.DataFrame(rows, columns=["metric", "pivot", "language", "layer", "value", "n"]), resampled


def unwrapped(model):
    """The transformers model inside a ``peft`` wrapper (LoRA layers stay in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def evaluating(model):
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_texts(texts: Mapping[str, Sequence[str]], pivot: str) -> None:
    """Parallel texts: the pivot among the languages, the same number (at least two) of units in each."""
    if pivot not in texts:
        raise NeuronXAError(f"pivot {pivot!r} is not among the texts' languages ({', '.join(texts)})")
    sizes = {language: len(units) for language, units in texts.items()}
    if len(set(sizes.values())) != 1 or sizes[pivot] < 2:
        raise NeuronXAError(f"texts must be parallel, at least two units per language, the same number in each: "
                            f"got {sizes}")


def score_model(model, tokenizer, texts: Mapping[str, Sequence[str]], pivot: str = "eng_Latn",
                metrics: Sequence[str] = ("nasca", "navca", "mexa"), pooling: str = "weighted",
                batch_size: int = 16, max_length: int = 512, skip_bos: bool = False,
                layers: int | None = None) -> pd.DataFrame:
    """Scores of a model in memory (no cache, no config): the long table ``score`` gives (metric, pivot,
    language, layer, value, n) for ``texts`` (language -> parallel sentences, the i-th of each language being
    translations), through stage one's probes and stage two's metrics. A ``peft`` model is scored with its
    adapters; the model is put in eval mode for the pass and back in its mode afterwards."""
    check_texts(texts, pivot)
    check_pooling(pooling)
    kinds = tuple(sorted({kind for metric in metrics for kind in representations(metric)}))
    languages = list(texts)
    with evaluating(model):
        states = pooled_states(unwrapped(model), tokenizer, [text for lang in languages for text in texts[lang]],
                               poolings=(pooling,), batch_size=batch_size, max_length=max_length, kinds=kinds,
                               skip_bos=skip_bos, layers=layers)
    parts = split_states(states, [len(texts[language]) for language in languages])
    scores, _ = score(StatesInMemory(dict(zip(languages, parts))), list(metrics), pooling, pivot, progress=False)
    return scores


def has_chance_level(metric: str) -> bool:
    """Scores that count units (k of n), for which the binomial chance level applies."""
    return metric in ALIGNMENT or metric.startswith("retrieval.")


LAYER_POOLS = ("mean", "max")


def check_layer_pool(layer_pool: str) -> None:
    if layer_pool not in LAYER_POOLS:
        raise NeuronXAError(f"score.layer_pool must be mean or max, not {layer_pool!r}")


def pool_layers(values: np.ndarray, layer_pool: str) -> np.ndarray:
    """Pool over layers (axis 0) by mean or max, ignoring undefined (NaN) layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every layer undefined: NaN, as pandas gives
        return np.nanmean(values, axis=0) if layer_pool == "mean" else np.nanmax(values, axis=0)


def interval(metric: str, value: float, half_values: np.ndarray | None, n: int,
             level: float) -> tuple[float, float]:
    """The interval of a layer-pooled score from its half-sample values (see ``uncertainty``): Wilson's with
    the design effect for shares of units, the normal one otherwise; NaN without resamples."""
    if half_values is None or len(half_values) < 2:
        return np.nan, np.nan
    if has_chance_level(metric):
        return uncertainty.share_interval(value, half_values, n, level)
    return uncertainty.normal_interval(value, half_values, n, level)


def summarise(scores: pd.DataFrame, layer_pool: str = "mean", resampled: Resampled | None = None,
              level: float = 0.95) -> pd.DataFrame:
    """Per metric and language: the layer-pooled score with its interval at ``level`` (from ``resampled``),
    the best layer and its value, n, chance p-value.

    The chance p-value is that of the pooled score read as k = round(score · n) aligned units of n.
    """
    check_layer_pool(layer_pool)
    rows = []
    for (metric, pivot, language), group in scores.groupby(["metric", "pivot", "language"], sort=False):
        values = group.set_index("layer")["value"]
        pooled = float(pool_layers(values.to_numpy(float), layer_pool))
        n = int(group["n"].iloc[0])
        chance = metrics.chance_pvalue(int(round(pooled * n)), n) if has_chance_level(metric) else np.nan
        halves = (resampled or {}).get((metric, language))
        low, high = interval(metric, pooled, None if halves is None else pool_layers(halves, layer_pool), n, level)
        best = values.idxmax() if values.notna().any() else -1
        rows.append({"metric": metric, "pivot": pivot, "language": language, "score": pooled,
                     "ci_low": low, "ci_high": high, "layer_pool": layer_pool, "best_layer": int(best),
                     "best_value": float(values.get(best, np.nan)), "n": n, "chance_p": chance})
    return pd.DataFrame(rows)


def differences(summary: pd.DataFrame, resampled: Resampled, level: float = 0.95) -> pd.DataFrame:
    """Per language, every pair of alignment scores (NASCA − MEXA, ...): the paired difference of their
    layer-pooled values on the same units, with a normal interval from the same half-samples."""
    present = [metric for metric in ALIGNMENT if metric in set(summary.metric)]
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
