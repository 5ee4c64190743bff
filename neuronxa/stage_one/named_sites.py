"""Probe sites named by the user in the config (``model.sites``), checked against the model's modules: one line
naming the first path that is missing or of the wrong kind."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import ffn_lists
from neuronxa.stage_one.site_paths import Sites
from neuronxa.stage_one.skipped import with_skipped
from neuronxa.stage_one.structure import submodule, widths


def checked_names(model: nn.Module, named: Sites) -> Sites:
    """``named`` after checking each path in every layer, with the layers the forward pass skips on text added to
    ``without``."""
    named.check()
    layers = _named_module(model.base_model, named.layers, "layers")
    if not isinstance(layers, nn.ModuleList):
        raise NeuronXAError(f"model.sites.layers: {named.layers} is a {type(layers).__name__}, not a list of layers")
    if named.ffn_list is not None:
        layers = ffn_lists.check_list(named, layers, _named_module(model.base_model, named.ffn_list, "ffn_list"))
    for index, layer in enumerate(layers):
        within = f"{named.ffn_list or named.layers}.{index}."
        ffn = _named_module(layer, named.ffn, "ffn", within)
        for field in ("act", "down", "gate", "up"):
            if getattr(named, field) is not None:
                _named_module(ffn, getattr(named, field), field, f"{within}{named.ffn}{'.' * bool(named.ffn)}")
        if widths(submodule(ffn, named.down)) is None:
            raise NeuronXAError(f"model.sites.down: {named.down} is a {type(submodule(ffn, named.down)).__name__}, "
                                "not a Linear or Conv1D projection")
    return replace(named, without=with_skipped(model.config, named.without))


def _named_module(module: nn.Module, path: str, field: str, within: str = "") -> nn.Module:
    try:
        return submodule(module, path)
    except AttributeError:
        raise NeuronXAError(f"model.sites.{field}: the model has no module {within}{path} (see the module paths "
                            "that print(model) shows)") from None
