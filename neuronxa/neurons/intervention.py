"""Interventions on neurons' activations a while a model runs: zero, scale, set or add, around any forward pass
or ``generate`` call (the KV-cached steps included), and the mean a of every neuron over a set of texts.

Each site kind is one small hook that changes a where the model computes it (``stage_one.probes.edit_hooks``):
in dense FFN layers the hook point of a (``on_a``: the activation module's output where there is one), replaced by
an edited copy; in mixture-of-experts layers an expert neuron e·I + j only on the tokens routed to expert e. The
edit itself, ``EDITS[mode](a, units, values) -> a``, is the same for every site kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.forward import padded_layers, probed_batches, tokenize
from neuronxa.stage_one.experts import Edit
from neuronxa.stage_one.pooling import pooling_weights, real_token_mask
from neuronxa.stage_one.probes import edit_hooks, has_experts, layer_widths

Mode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _zero(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_fill(-1, indices, 0)


def _scale(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, a.index_select(-1, indices) * values)


def _set(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, values.expand(*a.shape[:-1], len(indices)).contiguous())


def _add(a: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return a.index_copy(-1, indices, a.index_select(-1, indices) + values)


# mode -> edit(a, indices, values): a new tensor, a's neurons ``indices`` (last axis) changed by ``values``
EDITS: dict[str, Mode] = {"zero": _zero, "scale": _scale, "set": _set, "add": _add}


def neuron_frame(neurons: pd.DataFrame | Iterable[tuple[int, int]], value: float | Sequence[float] | None,
                 mode: str) -> pd.DataFrame:
    """The neurons as a frame (layer, neuron, value), with ``value`` spread over them and checked for ``mode``."""
    if mode not in EDITS:
        raise NeuronXAError(f"intervention mode {mode!r} is unknown: use one of {', '.join(EDITS)}")
    frame = (neurons[["layer", "neuron"]].copy() if isinstance(neurons, pd.DataFrame)
             else pd.DataFrame(list(neurons), columns=["layer", "neuron"]))
    if value is None and mode != "zero":
        raise NeuronXAError(f"intervention mode {mode!r} needs a value: a number or one per neuron")
    values = np.broadcast_to(np.asarray(0.0 if value is None else value, dtype=np.float32), (len(frame),)) \
        if np.ndim(value) == 0 else np.asarray(value, dtype=np.float32)
    if len(values) != len(frame):
        raise NeuronXAError(f"{len(values)} values for {len(frame)} neurons: give one number or one per neuron")
    return frame.astype({"layer": int, "neuron": int}).assign(value=values)


def layer_edits(frame: pd.DataFrame, mode: str, n_layers: int) -> dict[int, tuple[torch.Tensor, Edit]]:
    """Per layer, its chosen neurons (sorted) and the edit of a that gives each its value (moved to a's device and
    dtype; an edit may receive a subset of the neurons, e.g. one expert's)."""
    if len(frame) and (frame.layer.min() < 0 or frame.layer.max() >= n_layers):
        raise NeuronXAError(f"neurons in layer {int(frame.layer.max())}, but the model has {n_layers} layers")
    edits = {}
    for layer, group in frame.sort_values(["layer", "neuron"]).groupby("layer"):
        neurons, values = torch.tensor(group.neuron.to_numpy()), torch.tensor(group.value.to_numpy())

        def edit(a: torch.Tensor, units: torch.Tensor, chosen: torch.Tensor, *, neurons=neurons,
                 values=values) -> torch.Tensor:
            value = values[torch.searchsorted(neurons, chosen.cpu())]
            return EDITS[mode](a, units, value.to(a.device, a.dtype))

        edits[int(layer)] = (neurons, edit)
    return edits


@contextmanager
def intervene(model: nn.Module, neurons: pd.DataFrame | Iterable[tuple[int, int]], mode: str,
              value: float | Sequence[float] | None = None) -> Iterator[None]:
    """Change the chosen neurons' activation a while the block runs (any forward pass or ``generate``):
    ``zero`` (a = 0), ``scale`` (a ← value·a), ``set`` (a ← value) or ``add`` (a ← a + value), ``value`` a number
    or one per neuron; ``neurons`` are (layer, neuron) pairs or a frame with columns layer, neuron (as
    ``identify`` returns). The hooks are removed when the block ends, also on error."""
    frame = neuron_frame(neurons, value, mode)
    handles = []
    try:
        handles = edit_hooks(model, layer_edits(frame, mode, len(layer_widths(model))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_activations(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 16,
                     max_length: int = 512) -> np.ndarray:
    """The mean a of every neuron over the texts' tokens (a leading BOS left out): float32 (layers, neurons), a
    layer narrower than the widest (none where it has no FFN) zero-padded."""
    if has_experts(model):
        raise NeuronXAError("mean activations are defined for dense FFN neurons only: an expert neuron has no a on "
                            "the tokens not routed to its expert (intervene with a given value instead)")
    token_ids, _ = tokenize(tokenizer, texts, max_length)

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return pooling_weights(real_token_mask(attention, ids, tokenizer.bos_token_id, True), ("sum",))

    total, counted = None, 0.0
    for _, batch_weights, pooled in probed_batches(model, tokenizer, token_ids, kinds=("act",), weights=weights,
                                                   batch_size=batch_size, progress=False):
        summed = _summed_over_batch(pooled["act"])             # (layers, neurons)
        total = summed if total is None else total + summed
        counted += float(batch_weights.sum())
    if total is None or not counted:
        raise NeuronXAError("mean activations need at least one text with a token besides BOS")
    return (total / counted).float().cpu().numpy()


def _summed_over_batch(act: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Per layer, a summed over a batch's sentences (each pooled by its tokens' sum): (layers, widest), from
    (layers, 1, batch, width) or, where layers differ in width, a list of (1, batch, width of the layer)."""
    if not isinstance(act, list):
        return act[:, 0].double().sum(dim=1)
    return torch.from_numpy(padded_layers([layer[0].double().sum(dim=0).cpu().numpy() for layer in act]))
