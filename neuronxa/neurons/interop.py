"""The language-neuron anchors' published artifacts, in and out.

Activation counts, one ``torch.save`` file per language: LAPE's ``{'n': int, 'over_zero': LongTensor[layers,
neurons]}`` (RUCAIBox) and NJUNLP's ``{'total_tokens': int, 'over_zero': ...}``, where NJUNLP also saves a
``prefix.`` file per language (the prompt alone) whose counts are subtracted. Masks: ``List[List[LongTensor]]``
indexed ``[language][layer]``, each the sorted indices of that language's kept neurons in that layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from neuronxa.errors import NeuronXAError
from neuronxa.neurons.identify import in_mask, neuron_type

TOKEN_KEYS = ("n", "total_tokens")   # LAPE, NJUNLP


class Counts(NamedTuple):
    counts: np.ndarray        # (layers, neurons, languages) activation counts, int64
    tokens: list[int]         # counted tokens per language
    formats: list[str]        # per language: "lape" or "njunlp", with "-prefix" when a prefix file was subtracted


def _load(path: str | Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NeuronXAError(f"{path}: no such file") from None
    except Exception as error:  # torch raises a zoo of errors for a file it cannot read
        raise NeuronXAError(f"{path}: not a torch.save file the weights-only loader reads ({error.__class__.__name__})"
                            ) from None


def read_count_file(path: str | Path) -> tuple[int, np.ndarray, str]:
    """Token total, ``over_zero`` counts (layers, neurons) and the format of one activation-count file."""
    data = _load(path)
    key = next((key for key in TOKEN_KEYS if isinstance(data, dict) and key in data), None)
    if key is None or "over_zero" not in data:
        raise NeuronXAError(f"{path}: expected a dict with 'over_zero' and 'n' (LAPE) or 'total_tokens' (NJUNLP)")
    counts = torch.as_tensor(data["over_zero"]).to(torch.long).numpy()
    if counts.ndim != 2:
        raise NeuronXAError(f"{path}: 'over_zero' must be (layers, neurons), got shape {counts.shape}")
    return int(data[key]), counts, "lape" if key == "n" else "njunlp"


def read_counts(files: list[str | Path], prefix_files: list[str | Path] | None = None) -> Counts:
    """Activation counts of several languages (one file each, in order). With ``prefix_files`` (NJUNLP's
    ``prefix.activation.*``), each language counts the full file minus its prefix, clamped at zero, over
    max(token difference, 1), as NJUNLP's analysis does."""
    if not files:
        raise NeuronXAError("no activation-count files given")
    if prefix_files is not None and len(prefix_files) != len(files):
        raise NeuronXAError(f"{len(files)} count files but {len(prefix_files)} prefix files: give one prefix per file")
    tokens, arrays, formats = [], [], []
    for index, path in enumerate(files):
        total, counts, kind = read_count_file(path)
        if prefix_files is not None:
            prefix_total, prefix_counts, _ = read_count_file(prefix_files[index])
            if prefix_counts.shape != counts.shape:
                raise NeuronXAError(f"{prefix_files[index]}: shape {prefix_counts.shape}, but {path} has "
                                    f"{counts.shape}")
            total, counts = max(total - prefix_total, 1), np.clip(counts - prefix_counts, 0, None)
            kind += "-prefix"
        if arrays and counts.shape != arrays[0].shape:
            raise NeuronXAError(f"{path}: shape {counts.shape}, but {files[0]} has {arrays[0].shape}: "
                                "all languages must come from one model")
        tokens.append(total)
        arrays.append(counts)
        formats.append(kind)
    return Counts(np.stack(arrays, axis=-1), tokens, formats)


def mask_lists(neurons: pd.DataFrame, n_languages: int, n_layers: int) -> list[list[list[int]]]:
    """``[language][layer]`` sorted neuron indices of the kept neurons (``identify``'s ``kept`` rows)."""
    mask = [[set() for _ in range(n_layers)] for _ in range(n_languages)]
    for row in in_mask(neurons).itertuples():
        if not 0 <= row.layer < n_layers:
            raise NeuronXAError(f"neuron {row.neuron} sits in layer {row.layer}, but the mask has {n_layers} layers")
        for language in row.languages:
            if not 0 <= language < n_languages:
                raise NeuronXAError(f"language index {language} out of range for {n_languages} languages")
            mask[language][row.layer].add(int(row.neuron))
    return [[sorted(layer) for layer in language] for language in mask]


def write_mask(neurons: pd.DataFrame, path: str | Path, *, n_languages: int, n_layers: int) -> Path:
    """Save the kept neurons as the anchors' mask (``torch.load(path, weights_only=True)`` reads it back)."""
    lists = mask_lists(neurons, n_languages, n_layers)
    torch.save([[torch.tensor(layer, dtype=torch.long) for layer in language] for language in lists], path)
    return Path(path)


def read_mask(path: str | Path) -> pd.DataFrame:
    """An anchors' mask as ``identify``'s frame: layer, neuron, type, languages (indices), kept (all True)."""
    data = _load(path)
    if not (isinstance(data, list) and data and all(isinstance(language, list) for language in data)):
        raise NeuronXAError(f"{path}: expected a mask List[List[LongTensor]] indexed [language][layer]")
    n_languages = len(data)
    languages: dict[tuple[int, int], list[int]] = {}
    for language, layers in enumerate(data):
        for layer, indices in enumerate(layers):
            for neuron in torch.as_tensor(indices).reshape(-1).tolist():
                languages.setdefault((layer, int(neuron)), []).append(language)
    rows = [(layer, neuron, neuron_type(len(found), n_languages), tuple(found), True)
            for (layer, neuron), found in sorted(languages.items())]
    frame = pd.DataFrame(rows, columns=["layer", "neuron", "type", "languages", "kept"])
    frame.attrs.update(n_languages=n_languages, n_layers=max(len(layers) for layers in data))
    return frame
