"""Stage two: per-language, per-layer scores from the cached pooled states, and their layer-pooled summary.

Metrics and the representation each reads:
``nasca`` (NAS), ``navca`` (NAV), ``mexa`` (hidden states) — the weak alignment score μ of the cosine matrix;
``cka``, ``svcca``, ``anc`` (hidden states) — the embedding baselines;
``retrieval`` — pivot→target, target→pivot and bidirectional accuracy, on NAS and on hidden states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronxa import metrics
from neuronxa.errors import NeuronXAError
from neuronxa.store import StateStore

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


def layer_values(X: np.ndarray, Y: np.ndarray, kind: str, wanted: list[str]) -> dict[str, float]:
    """Values of the wanted metrics on one layer: pivot units X against target units Y (same order)."""
    values: dict[str, float] = {}
    needs_cosine = any(ALIGNMENT.get(m) == kind for m in wanted) or "retrieval" in wanted
    C = metrics.cosine_matrix(X, Y) if needs_cosine else None
    for metric in wanted:
        if ALIGNMENT.get(metric) == kind:
            values[metric] = metrics.weak_alignment(C)
        elif metric in BASELINES and kind == "hidden":
            values[metric] = BASELINES[metric](X, Y)
        elif metric == "retrieval" and kind in RETRIEVAL_REPRESENTATIONS:
            for direction, value in metrics.retrieval_accuracy(C).items():
                values[f"retrieval.{kind}.{direction}"] = value
    return values


def score(
    store: StateStore,
    wanted: list[str],
    pooling: str,
    pivot: str,
    languages: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Long table (metric, pivot, language, layer, value, n) for every target language and layer."""
    cached = store.languages()
    if pivot not in cached:
        raise NeuronXAError(f"pivot language {pivot!r} has no cached states (cached: {', '.join(cached)})")
    targets = [lang for lang in (languages or cached) if lang != pivot]
    missing = [lang for lang in targets if lang not in cached]
    if missing:
        raise NeuronXAError(f"no cached states for {', '.join(missing)}: run stage one for them first")
    kinds = sorted({kind for metric in wanted for kind in representations(metric)})
    pivot_ids = {unit: row for row, unit in enumerate(store.ids(pivot))}
    pivot_states = {kind: store.read(pivot, kind, pooling) for kind in kinds}
    rows = []
    for language in tqdm(targets, desc=f"stage two: {pooling}", unit="language", disable=not progress):
        shared = [(pivot_ids[unit], row) for row, unit in enumerate(store.ids(language)) if unit in pivot_ids]
        if len(shared) < 2:
            raise NeuronXAError(f"{language} shares {len(shared)} unit(s) with {pivot}: alignment needs two")
        pivot_rows, target_rows = map(list, zip(*shared))
        for kind in kinds:
            for layer in range(pivot_states[kind].shape[0]):
                X = pivot_states[kind][layer, pivot_rows]
                Y = store.read(language, kind, pooling, layer)[target_rows]
                for metric, value in layer_values(X, Y, kind, wanted).items():
                    rows.append((metric, pivot, language, layer, value, len(shared)))
    return pd.DataFrame(rows, columns=["metric", "pivot", "language", "layer", "value", "n"])


def has_chance_level(metric: str) -> bool:
    """Scores that count units (k of n), for which the binomial chance level applies."""
    return metric in ALIGNMENT or metric.startswith("retrieval.")


LAYER_POOLS = ("mean", "max")


def check_layer_pool(layer_pool: str) -> None:
    if layer_pool not in LAYER_POOLS:
        raise NeuronXAError(f"score.layer_pool must be mean or max, not {layer_pool!r}")


def summarise(scores: pd.DataFrame, layer_pool: str = "mean") -> pd.DataFrame:
    """Per metric and language: the layer-pooled score, the best layer and its value, n, chance p-value.

    The chance p-value is that of the pooled score read as k = round(score · n) aligned units of n.
    """
    check_layer_pool(layer_pool)
    rows = []
    for (metric, pivot, language), group in scores.groupby(["metric", "pivot", "language"], sort=False):
        values = group.set_index("layer")["value"]
        pooled = float(values.mean() if layer_pool == "mean" else values.max())
        n = int(group["n"].iloc[0])
        chance = metrics.chance_pvalue(int(round(pooled * n)), n) if has_chance_level(metric) else np.nan
        best = values.idxmax() if values.notna().any() else -1
        rows.append({"metric": metric, "pivot": pivot, "language": language, "score": pooled,
                     "layer_pool": layer_pool, "best_layer": int(best),
                     "best_value": float(values.get(best, np.nan)), "n": n, "chance_p": chance})
    return pd.DataFrame(rows)
