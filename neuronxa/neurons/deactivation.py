"""Switching language neurons off: chosen neurons' activations zeroed (``intervene``'s ``zero``), random control sets
of the same size per layer, and the perplexity matrix (deactivated language × evaluated language) with its
summary."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from neuronxa.neurons.identify import in_mask
from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one.likelihood import perplexity
from neuronxa.stage_one.probes import layer_widths


def by_layer_indices(neurons: pd.DataFrame) -> dict[int, list[int]]:
    """The neurons' indices grouped by layer (layer -> sorted neuron indices)."""
    return {int(layer): sorted(group.neuron.astype(int)) for layer, group in neurons.groupby("layer")}


@contextmanager
def deactivated(model: torch.nn.Module, chosen: Mapping[int, Sequence[int]]) -> Iterator[None]:
    """Zero the activation a of the chosen neurons (layer -> neuron indices) while the block runs:
    ``intervene(model, neurons, "zero")`` (expert neurons e·I + j only on the tokens routed to expert e, the same
    as zeroing ``down_proj[e, :, j]``)."""
    with intervene(model, [(layer, neuron) for layer, indices in chosen.items() for neuron in indices], "zero"):
        yield


def random_like(chosen: dict[int, list[int]], n_neurons: int | Sequence[int],
                rng: np.random.Generator) -> dict[int, list[int]]:
    """Random neurons with as many per layer as ``chosen`` has (``n_neurons``: per layer where widths differ):
    the control set."""
    width = lambda layer: n_neurons if isinstance(n_neurons, int) else n_neurons[layer]
    return {layer: sorted(rng.choice(width(layer), size=len(indices), replace=False).tolist())
            for layer, indices in chosen.items()}


def deactivation_matrix(model, tokenizer, neurons: pd.DataFrame, *, languages: list[str],
                        texts: dict[str, list[str]], seed: int = 0,
                        max_length: int = 512) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Perplexity change (deactivated − intact) per deactivated language (rows) × evaluated language (columns),
    for each language's own neurons (its mask: kept neurons above the bar in it) and for random sets of the same
    size per layer; and the intact perplexity per language."""
    width = layer_widths(model)
    intact = pd.Series({language: perplexity(model, tokenizer, texts[language], max_length) for language in languages})
    rng = np.random.default_rng(seed)
    own, control = [], []
    for index, language in enumerate(languages):
        chosen = by_layer_indices(in_mask(neurons, index))
        for target, sets in ((own, chosen), (control, random_like(chosen, width, rng))):
            with deactivated(model, sets):
                target.append([perplexity(model, tokenizer, texts[e], max_length) - intact[e] for e in languages])
    frame = lambda rows: pd.DataFrame(rows, index=pd.Index(languages, name="deactivated"), columns=languages)
    return frame(own), frame(control), intact


def deactivation_summary(own: pd.DataFrame, control: pd.DataFrame, intact: pd.Series) -> pd.DataFrame:
    """Per neuron set (a language's own neurons, or the random control), on the diagonal (the language's own
    text) and off it: the mean log perplexity ratio (deactivated / intact, so that languages with a high
    perplexity do not dominate), and how many evaluated languages suffer most from their own row."""
    diagonal = np.eye(len(own), dtype=bool)
    rows = []
    for name, frame in (("language", own), ("random", control)):
        log_ratio = np.log((frame + intact) / intact).to_numpy()
        own_worst = int(sum(np.argmax(log_ratio[:, j]) == j for j in range(len(frame))))
        for cell, mask in (("diagonal", diagonal), ("off_diagonal", ~diagonal)):
            rows.append({"set": name, "cell": cell, "mean_log_ratio": float(np.nanmean(log_ratio[mask])),
                         "own_row_hurts_most": f"{own_worst}/{len(frame)}" if cell == "diagonal" else ""})
    return pd.DataFrame(rows)
