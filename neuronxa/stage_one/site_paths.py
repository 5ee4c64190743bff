"""The probe sites as module paths (``Sites``): found from a model's structure (``sites``) or named by the user in
the config, and recorded in the cache key; a value, imported without torch."""

from __future__ import annotations

from dataclasses import dataclass

from neuronxa.errors import NeuronXAError


@dataclass(frozen=True)
class Sites:
    """Module paths of the probe sites: ``layers`` under the base model; ``ffn`` within a layer (empty: the layer
    itself); ``act`` (output a; None where a function computes it), ``down`` (input z), ``gate`` and ``up`` within
    the FFN (the same path when fused); ``activation``: the function a is computed with where there is no ``act``
    module and the FFN is gated (a = activation(gate x), of the first ``width`` outputs when fused); ``without``:
    the decoder layers that have no FFN (a hybrid's other mixers, Nemotron-H's) or whose FFN never runs on text
    (skipped.py): no neurons (width 0); ``ffn_list``: where the FFNs sit in a list beside the layers (XLM's
    ``ffns``), its path under the base model, its i-th item holding layer i's FFN at ``ffn`` (``layers`` then names
    the list whose items' outputs are the hidden states, XLM's ``layer_norm2``)."""

    layers: str
    ffn: str
    act: str | None
    down: str
    gated: bool
    gate: str | None = None
    up: str | None = None
    activation: str | None = None
    without: tuple[int, ...] = ()
    ffn_list: str | None = None

    def check(self) -> None:
        """One line naming what is missing when a gated FFN has no activation module."""
        if self.gated and self.act is None and (self.gate is None or self.up is None or self.activation is None):
            raise NeuronXAError("sites: a gated FFN without an act module needs gate and up (the projections' "
                                "paths within the FFN; the same path when fused) and activation (e.g. silu)")
