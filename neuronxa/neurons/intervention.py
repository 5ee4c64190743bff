"""Interventions on neurons' activations a while a model runs: zero, scale, set or add, around any forward pass
or ``generate`` call (the KV-cached steps included), and the mean a of every neuron over a set of texts.

Each site kind is one small hook that changes a where the model computes it; for dense FFN layers that is the
hook point of a in each decoder layer (``stage_one.probes.on_a``: the activation module's output where there is
one), replaced by an edited copy. The edit itself, ``edit(a, indices, values) -> a``, is the same for every site kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.forward import probed_batches, tokenize
from neuronxa.stage_one.pooling import pooling_weights, real_token_mask
from neuronxa.stage_one.probes import architecture, decoder_layers, on_a

Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _zero(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_fill(-1, indices, 0)


def _scale(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, a.index_select(-1, indices) * values)


def _set(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, values.expand(*a.shape[:-1], len(indices)).contiguous())


def _add(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, a.index_select(-1, indices) + values)


# mode -> edit(a, indices, values): a new tensor, a's neurons ``indices`` (last axis) changed by ``values``
EDITS: dict[str, Edit] = {"zero": _zero, "scale": _scale, "set": _set, "add": _add}


def dense_site(model: nn.Module, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]) -> list:
    """Apply ``edit`` to a of a dense FFN layer where the model computes it (``probes.on_a``); returns the hooks."""
    return on_a(decoder_layers(model)[layer], architecture(model), edit)


def neuron_frame(neurons: pd.DataFrame | Iterable[tuple[int, int]], value: float | Sequence[float] | None,
                 mode: str) -> pd.DataFrame:
    """The neurons as a frame (layer, neuron, value), with ``value`` spread over them and checked for ``mode``."""
    if mode not in EDITS:
        raise NeuronXAError(f"intervention mode {mode!r} is unknown: use one of {', '.join(EDITS)}")
    frame = (neurons[["layer", "neuron"]].copy() if isinstance(neurons, pd.DataFrame)
             else pd.DataFrame(list(neurons), columns=["layer", "neuron"]))
    if isinstance(neurons, pd.DataFrame) and "expert" in neurons and neurons["expert"].notna().any():
        raise NeuronXAError("expert neurons cannot be intervened on yet: only dense FFN neurons are supported")
    if value is None and mode != "zero":
        raise NeuronXAError(f"intervention mode {mode!r} needs a value: a number or one per neuron")
    values = np.broadcast_to(np.asarray(0.0 if value is None else value, dtype=np.float32), (len(frame),)) \
        if np.ndim(value) == 0 else np.asarray(value, dtype=np.float32)
    if len(values) != len(frame):
        raise NeuronXAError(f"{len(values)} values for {len(frame)} neurons: give one number or one per neuron")
    return frame.astype({"layer": int, "neuron": int}).assign(value=values)


def layer_edits(frame: pd.DataFrame, mode: str, n_layers: int) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """Per layer, the function that edits that layer's a (indices and values moved to a's device and dtype)."""
    if len(frame) and (frame.layer.min() < 0 or frame.layer.max() >= n_layers):
        raise NeuronXAError(f"neurons in layer {int(frame.layer.max())}, but the model has {n_layers} layers")
    edits = {}
    for layer, group in frame.groupby("layer"):
        index, values = torch.tensor(group.neuron.to_numpy()), torch.tensor(group.value.to_numpy())

        def edit(a: torch.Tensor, *, index=index, values=values) -> torch.Tensor:
            return EDITS[mode](a, index.to(a.device), values.to(a.device, a.dtype))

        edits[int(layer)] = edit
    return edits


@contextmanager
def intervene(model: nn.Module, neurons: pd.DataFrame | Iterable[tuple[int, int]], mode: str,
              value: float | Sequence[float] | None = None) -> Iterator[None]:
    """Change the chosen neurons' activation a while the block runs (any forward pass or ``generate``):
    ``zero`` (a = 0), ``scale`` (a ← value·a), ``set`` (a ← value) or ``add`` (a ← a + value), ``value`` a number
    or one per neuron; ``neurons`` are (layer, neuron) pairs or a frame with columns layer, neuron (as
    ``identify`` returns). The hooks are removed when the block ends, also on error."""
    frame = neuron_frame(neurons, value, mode)
    edits = layer_edits(frame, mode, len(decoder_layers(model)))
    handles = []
    try:
        for layer, edit in edits.items():
            handles += dense_site(model, layer, edit)
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_activations(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 16,
                     max_length: int = 512) -> np.ndarray:
    """The mean a of every neuron over the texts' tokens (a leading BOS left out): float32 (layers, neurons)."""
    token_ids, _ = tokenize(tokenizer, texts, max_length)

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return pooling_weights(real_token_mask(attention, ids, tokenizer.bos_token_id, True), ("sum",))

    total, counted = None, 0.0
    for _, batch_weights, pooled in probed_batches(model, tokenizer, token_ids, kinds=("act",), weights=weights,
                                                   batch_size=batch_size, progress=False):
        summed = pooled["act"][:, 0].double().sum(dim=1)       # (layers, neurons)
        total = summed if total is None else total + summed
        counted += float(batch_weights.sum())
    if total is None or not counted:
        raise NeuronXAError("mean activations need at least one text with a token besides BOS")
    return (total / counted).float().cpu().numpy()
