"""Tables of identified language neurons: counts per language and per layer, the four stages located from the
per-layer counts, the overlap between languages, and the change from a base model to its aligned version."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuronxa.neurons.identify import TYPES


def counts_by_language(neurons: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Per language: its specific neurons, the related neurons it shares, and the agnostic neurons."""
    rows = []
    for index, language in enumerate(languages):
        mine = neurons[np.array([index in langs for langs in neurons.languages], dtype=bool)]  # rows, even if none
        rows.append({"language": language, **{kind: int((mine.type == kind).sum()) for kind in TYPES}})
    return pd.DataFrame(rows)


def by_layer(neurons: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Neurons of each type per layer (all layers, zeros included)."""
    table = pd.crosstab(neurons.layer, neurons.type).reindex(index=range(n_layers), columns=list(TYPES), fill_value=0)
    table.index.name = "layer"
    return table


STAGE_RULE = (
    "language neurons = specific + related per layer, m = their mean over layers; q = the upper-half layer "
    "with the fewest agnostic neurons (the last such). 1 multilingual understanding: the layers before the "
    "first layer with fewer than m language neurons; 2 shared semantic reasoning: from there to the last such "
    "layer before q; 3 multilingual output transformation: from there to q; 4 vocabulary output: the layers "
    "after q, where agnostic neurons rise again"
)


def stages(layers: pd.DataFrame) -> pd.DataFrame:
    """The four stages as layer ranges, located from the per-layer neuron counts by STAGE_RULE."""
    counts = (layers["specific"] + layers["related"]).to_numpy()
    agnostic = layers["agnostic"].to_numpy()
    n = len(counts)
    mean = counts.mean()
    upper = agnostic[n // 2:]
    peak = n // 2 + int(np.flatnonzero(upper == upper.min())[-1])
    below = [layer for layer in range(peak) if counts[layer] < mean]
    first_low = below[0] if below else peak
    last_low = below[-1] if below else peak - 1
    bounds = [(0, first_low - 1), (first_low, last_low), (last_low + 1, peak), (peak + 1, n - 1)]
    names = ["multilingual understanding", "shared semantic reasoning", "multilingual output transformation",
             "vocabulary output"]
    return pd.DataFrame([{"stage": i + 1, "name": name, "first_layer": a, "last_layer": b,
                          "layers": max(b - a + 1, 0)} for i, (name, (a, b)) in enumerate(zip(names, bounds))])


def overlap(neurons: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Language × language: language neurons (specific or related) that both languages have."""
    language_neurons = neurons[neurons.type != "agnostic"]
    sets = [{(row.layer, row.neuron) for row in language_neurons.itertuples() if i in row.languages}
            for i in range(len(languages))]
    matrix = [[len(a & b) for b in sets] for a in sets]
    return pd.DataFrame(matrix, index=languages, columns=languages)


def compare(base: pd.DataFrame, aligned: pd.DataFrame, languages: list[str], *, n_layers: int,
            aligned_languages: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base vs aligned: change per type and layer, and per language and type (aligned − base), with each
    language marked as in the aligned set or not (a change outside it is "spontaneous" alignment)."""
    layers = by_layer(aligned, n_layers) - by_layer(base, n_layers)
    per_language = counts_by_language(aligned, languages).set_index("language") - \
        counts_by_language(base, languages).set_index("language")
    if aligned_languages is not None:
        per_language["in_aligned_set"] = [language in aligned_languages for language in per_language.index]
    return layers, per_language.reset_index()
