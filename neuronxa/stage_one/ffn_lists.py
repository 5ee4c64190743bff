"""The FFN of decoder layer i, wherever it sits (``layer_ffn``, for probes, edits and widths alike): within the
layer, or the i-th item of a list beside the layers. XLM keeps its layers as parallel lists under the base model
(``attentions``, ``layer_norm1``, ``ffns``, ``layer_norm2``) and runs, for layer i, attention, residual,
``layer_norm1[i]``, the residual around ``ffns[i]``, then ``layer_norm2[i]``, whose output is the hidden state.
Structure finds the FFN list (as long as the layers, every item an FFN); which list's items give the hidden
states it cannot tell (``OUTPUTS``)."""

from __future__ import annotations

from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.runs import probed_layers
from neuronxa.stage_one.site_paths import Sites
from neuronxa.stage_one.structure import ffn_parts, model_type, submodule

__all__ = ["OUTPUTS", "beside", "check_list", "layer_ffn"]

OUTPUTS = {"xlm": "layer_norm2"}   # model type -> the list whose items' outputs are the hidden states


def layer_ffn(base: nn.Module, sites: Sites, index: int, layer: nn.Module | None = None) -> nn.Module | None:
    """The FFN of probed layer ``index`` under the base model (None in a layer without one): within ``layer``, the
    module that runs it (by default the layer that runs it: item ``index`` of the layers, or, where layers run
    several times, the one of run ``index``), or item ``index`` of the list beside them."""
    if index in sites.without:
        return None
    if sites.ffn_list is not None:
        layer = submodule(base, sites.ffn_list)[index]
    elif layer is None:
        layer = probed_layers(base, submodule(base, sites.layers))[index]
    return submodule(layer, sites.ffn)


def beside(model: nn.Module, path: str, hidden: int) -> tuple[str, str | None]:
    """The decoder layers' path and, where no module in them is an FFN, that of a list beside them, as long,
    whose every item is an FFN (``OUTPUTS`` naming the layers; one line where it names none); else
    ``(path, None)``."""
    base, kind = model.base_model, model_type(model)
    layers = submodule(base, path)
    if any(ffn_parts(module, hidden) for module in layers.modules()):
        return path, None
    lists = [name for name, module in base.named_modules() if isinstance(module, nn.ModuleList) and name != path
             and len(module) == len(layers) and all(ffn_parts(item, hidden) for item in module)]
    if not lists:
        return path, None
    if kind not in OUTPUTS:
        raise NeuronXAError(f"model type {kind!r} keeps its FFNs in a list beside its decoder layers ({lists[0]}) "
                            "and its structure does not tell which list's items output the hidden states: name it "
                            f"with model.sites.layers (and model.sites.ffn_list: {lists[0]})")
    return OUTPUTS[kind], lists[0]


def check_list(named: Sites, layers: nn.ModuleList, listed: nn.Module) -> nn.ModuleList:
    """The named FFN list, after checking that it is a list as long as the layers (one line if not)."""
    if not isinstance(listed, nn.ModuleList) or len(listed) != len(layers):
        length = f" of {len(listed)}" if isinstance(listed, nn.ModuleList) else ""
        raise NeuronXAError(f"model.sites.ffn_list: {named.ffn_list} is a {type(listed).__name__}{length}, not a "
                            f"list as long as model.sites.layers ({named.layers}: {len(layers)} layers)")
    return listed
