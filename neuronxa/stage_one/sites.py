"""Where a model's FFN probes attach, found from its module tree (or named by the user for an exotic model).

Per decoder layer: the FFN, the module whose output is the activation ``a`` (``act_fn(gate x)`` when gated), and
the down projection, whose input is ``z`` (``a * up x`` when gated, ``a`` otherwise) and whose input width is the
neuron count. Found by structure:
- the decoder layers: the longest ``nn.ModuleList`` under the base model (preferring one as long as the config's
  number of layers, so that a vision tower's list is not taken; never a list nested in another list's item);
- the FFN: the first module of a layer called (or whose class is called) MLP / feed-forward / FFN that holds a
  down projection (a Linear or GPT-2 Conv1D from the FFN width to the hidden size) and an input projection (from
  the hidden size to that width, or twice it when gate and up are fused); else the layer itself (OPT, XGLM); or
  either split over two children, input projections and activation module in one, the down projection in the
  other (BERT's ``intermediate`` and ``output``, CPM-Ant's ``w_in`` and ``w_out``: structure.split_ffn); or,
  where no module of the layers is an FFN, the items of a list beside them (XLM's ``ffns``: ffn_lists.py);
- gated: two input projections (gate and up, the gate named ``gate*`` or ``w1``) or a fused one;
- the activation: an activation module of the FFN (parameter-free or not, e.g. xIELU); where ``a`` is computed by a
  plain function, it is the gate projection's output through the config's activation (``hidden_act``), or, when
  not gated, the down projection's input;
- mixture-of-experts layers: an FFN block with routed experts that experts.py reads (``expert_blocks.probed``); dense
  and MoE layers may mix at one FFN path, the dense fields of ``Sites`` describing the first dense layer (all-MoE:
  the experts module's). Other MoE blocks (e.g. a list of per-expert modules) are refused in one line;
- layers without an FFN (a hybrid's other mixers, in which no module is named as an FFN): no neurons (``without``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from weakref import WeakKeyDictionary

from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import expert_blocks, ffn_lists
from neuronxa.stage_one.models.loading import refuse_unsupported
from neuronxa.stage_one.named_sites import checked_names
from neuronxa.stage_one.runs import layer_path, probed_layers, repeats, schedule
from neuronxa.stage_one.site_paths import Sites
from neuronxa.stage_one.skipped import with_skipped
from neuronxa.stage_one.structure import act_module, ffn_parts, model_type, projections, submodule, widths

__all__ = ["ACTIVATIONS", "Sites", "act_modules", "architecture", "checked_sites", "decoder_layers", "ffn_width",
           "ffns", "find_sites", "has_experts", "layer_list", "layer_widths", "model_type", "module_paths",
           "name_sites", "submodule", "widths"]

_FFN_NAME = re.compile(r"mlp|feed_?forward|ffn", re.IGNORECASE)
_MOE_CLASS = re.compile(r"experts|sparsemoe|moe(block|layer)?$", re.IGNORECASE)
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)   # JetMoe's attention is a mixture of experts: no FFN
_ACT_CONFIG_KEYS = ("hidden_act", "activation_function", "hidden_activation", "afn")
# what structure cannot tell: the activation function of gated FFNs that apply it as a plain function, where the
# config names none
ACTIVATIONS = {"lfm2": "silu", "lfm2_moe": "silu", "lfm3": "silu"}


_NAMED: WeakKeyDictionary = WeakKeyDictionary()


def name_sites(model: nn.Module, sites: Sites | None) -> None:
    """Use ``sites`` (checked against the model) for ``model`` instead of those found by structure (None: found
    again)."""
    if sites is None:
        _NAMED.pop(model, None)
    else:
        _NAMED[model] = checked_sites(model, sites)


def layer_list(model: nn.Module) -> str:
    """Path (under the base model) of the decoder layers: the first list a schedule names (runs.py), else the
    longest ModuleList as long as the config's number of layers (a vision tower's list is another length), else
    the longest; never a list inside another list's item (LongCat-Flash's layers each hold two attention modules
    and two MLPs, in lists of the config's length)."""
    if (order := schedule(model)) is not None:   # lists the model type's schedule names: the first one
        return order[0][0]
    lists = [(name, len(m)) for name, m in model.base_model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise NeuronXAError(f"model type {model_type(model)!r} has no list of decoder layers: name its sites "
                            "with model.sites")
    count = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    outer = [item for item in lists if not any(item[0].startswith(f"{name}.") for name, _ in lists)]
    return max(outer, key=lambda item: (item[1] == count, item[1]))[0]


def _ffn_path(layer: nn.Module, hidden: int) -> str | None:
    """Path within a layer of its FFN (the layer's own path ``''`` when flat), or None when it has none."""
    for name, module in layer.named_modules():
        last = name.rsplit(".", 1)[-1]
        if name and (expert_blocks.experts_module(module) is not None or expert_blocks.parallel_experts(module)
                     or expert_blocks.glu_experts(module) is not None):
            return name
        if name and (_FFN_NAME.search(last) or _FFN_NAME.search(type(module).__name__)) \
                and ffn_parts(module, hidden):
            return name
    return "" if ffn_parts(layer, hidden) else None


def _refuse_moe(model: nn.Module, layers: nn.ModuleList, path: str) -> None:
    """One line for a mixture-of-experts block that experts.py cannot probe, or one with dense FFNs beside it in
    the layer that cannot be read as its shared experts (several children, or the block has its own, or one
    without an activation module); those of the one child (a dense FFN, or a list of them, as LongCat-Flash's
    ``mlps``, run in the list's order) are placed beside the block (``expert_blocks.place_beside``), their units
    read after the experts'."""
    hidden = _hidden_size(model)
    for index, layer in enumerate(layers):
        probed = [module for module in layer.modules() if expert_blocks.probed(module)]
        inside = {id(sub) for module in probed for sub in module.modules()}
        beside = [name for name, child in layer.named_children() if probed and id(child) not in inside
                  and (_FFN_NAME.search(name) or _FFN_NAME.search(type(child).__name__))
                  and any(projections(ffn, hidden) for ffn in (child if isinstance(child, nn.ModuleList) else [child]))]
        child = getattr(layer, beside[0]) if beside else None
        dense = list(child) if isinstance(child, nn.ModuleList) else [child]
        if beside and (len(beside) > 1 or len(probed) > 1 or expert_blocks.own_shared(probed[0]) is not None
                       or not all(projections(ffn, hidden) and expert_blocks.readable_shared(ffn) for ffn in dense)):
            raise NeuronXAError(f"model type {model_type(model)!r} adds a dense FFN ({path}.{index}.{beside[0]}) "
                                "beside its mixture-of-experts block that cannot be read as its shared experts "
                                "(several, the block's own beside it, or no activation module): not supported")
        if beside:   # their units are read as the block's shared experts
            expert_blocks.place_beside(probed[0], dense)
        for name, module in layer.named_modules():
            if _MOE_CLASS.search(type(module).__name__) and id(module) not in inside and not _ATTENTION.search(name):
                raise NeuronXAError(f"model type {model_type(model)!r} is a mixture-of-experts model "
                                    f"({type(module).__name__} at {path}.{index}.{name}): expert neurons are read "
                                    "from one experts module called with the routed tokens (top_k_index, "
                                    "top_k_weights), which this one is not: not supported")


def _activation(model: nn.Module) -> str:
    """The activation function a gated FFN applies as a plain function: the config's, else the table's."""
    config = model.config.get_text_config()
    named = next((getattr(config, key) for key in _ACT_CONFIG_KEYS if isinstance(getattr(config, key, None), str)),
                 None)
    if named is None and model_type(model) not in ACTIVATIONS:
        raise NeuronXAError(f"model type {model_type(model)!r} applies its FFN activation as a function and its "
                            "config names none: name it with model.sites.activation")
    return named or ACTIVATIONS[model_type(model)]


def _hidden_size(model: nn.Module) -> int:
    config = model.config.get_text_config()
    return getattr(config, "hidden_size", None) or model.get_input_embeddings().weight.shape[1]


def _ffn_of_every_layer(model: nn.Module, layers: nn.ModuleList, path: str,
                        hidden: int) -> tuple[str, tuple[int, ...]]:
    """The FFN's path within each layer, the same in all that have one, and the layers without one (a hybrid's
    other mixers: no module named as an FFN), or one line naming why there is none."""
    paths = [_ffn_path(layer, hidden) for layer in layers]
    missing = [index for index, found in enumerate(paths) if found is None]
    if len(missing) == len(paths):
        raise NeuronXAError(f"model type {model_type(model)!r} has no feed-forward layers: no MLP with a down "
                            f"projection (width -> {hidden}) in {path}.0; if it has one, name its sites with "
                            "model.sites")
    named = [index for index in missing if any(_FFN_NAME.search(name) or _FFN_NAME.search(type(module).__name__)
                                               for name, module in layers[index].named_modules() if name)]
    if named or len({found for found in paths if found is not None}) > 1:
        raise NeuronXAError(f"model type {model_type(model)!r} has no FFN at one path in every decoder layer "
                            f"(none in layers {', '.join(map(str, named)) or '-'}): not supported")
    return next(found for found in paths if found is not None), tuple(missing)


_FOUND: WeakKeyDictionary = WeakKeyDictionary()


def find_sites(model: nn.Module) -> Sites:
    """The probe sites of a causal LM, found from its module tree (see the module's docstring) once per model:
    probes, interventions and the width lookups ask for them many times."""
    if model not in _FOUND:
        _FOUND[model] = _search(model)
    return _FOUND[model]


def _search(model: nn.Module) -> Sites:
    refuse_unsupported(model_type(model), model.config)
    path = layer_list(model)
    layers = submodule(model.base_model, path)
    _refuse_moe(model, layers, path)
    hidden = _hidden_size(model)
    path, listed = ffn_lists.beside(model, path, hidden)   # XLM: its FFNs in a list beside the layers
    holders = submodule(model.base_model, listed or path)
    ffn_path, without = _ffn_of_every_layer(model, holders, listed or path, hidden)
    without = with_skipped(model.config, without)   # and the layers the forward pass skips on text alone
    found = [submodule(holder, ffn_path) for index, holder in enumerate(holders) if index not in without]
    ffns = [ffn for ffn in found if not expert_blocks.probed(ffn)]
    if not ffns:
        return replace(_moe_sites(path, ffn_path, found[0]), without=without, ffn_list=listed)
    down, inputs, width, act = ffn_parts(ffns[0], hidden)
    gated = len(inputs) > 1 or widths(submodule(ffns[0], inputs[0]))[1] == 2 * width
    if act is not None and len({id(submodule(ffn, act)) for ffn in ffns}) < len(ffns):
        act = None   # one module shared by all layers: its hooks could not tell the layers apart
    if not gated:
        return Sites(path, ffn_path, act, down, False, without=without, ffn_list=listed)
    gate = next((name for name in inputs if "gate" in name or name == "w1"), inputs[0])
    up = next((name for name in inputs if name != gate), gate)
    swiglu = expert_blocks.swiglu_ffn(ffns[0])   # computed in the forward, whatever the config names (MiniMax-M3)
    return Sites(path, ffn_path, act, down, True, gate, up,
                 None if act else "clamped_swiglu" if swiglu else _activation(model), without, listed)


def _moe_sites(path: str, ffn_path: str, block: nn.Module) -> Sites:
    """The sites of a model whose every layer is a mixture of experts: those of the experts module (its a, where
    an activation module computes it, and its 3-D projections)."""
    if (pair := expert_blocks.parallel_experts(block)) is not None:   # JetMoe
        names = {id(child): name for name, child in block.named_children()}
        first, second = (names[id(module)] for module in pair)
        return Sites(path, ffn_path, act_module(block), second, True, first, first)
    if expert_blocks.glu_experts(block) is not None:   # DBRX: 2-D stacks in the experts' GLU
        return Sites(path, ffn_path, "experts.mlp.activation_fn", "experts.mlp.w2", True, "experts.mlp.w1",
                     "experts.mlp.v1")
    act = "experts.act_fn" if hasattr(expert_blocks.experts_module(block), "act_fn") else None
    return Sites(path, ffn_path, act, "experts.down_proj", True, "experts.gate_up_proj", "experts.gate_up_proj")


def architecture(model: nn.Module) -> Sites:
    """The probe sites of a model: those named for it (``name_sites``), else those found by structure."""
    return _NAMED.get(model) or find_sites(model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM."""
    return submodule(model.base_model, architecture(model).layers)


def ffns(model: nn.Module) -> list[nn.Module | None]:
    """Each probed layer's FFN module (None in a layer without one; per run of a layer that runs several times)."""
    found = architecture(model)
    return [ffn_lists.layer_ffn(model.base_model, found, index, layer)
            for index, layer in enumerate(probed_layers(model, decoder_layers(model)))]


def act_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's activation module (its forward output is a); empty where a function computes a (see
    ``on_a`` for a hook point that every dense architecture has), and for mixture-of-experts and hybrid models
    (layers without an FFN) and layers that run several times."""
    act = architecture(model).act
    return [] if act is None or has_experts(model) or architecture(model).without or repeats(model) \
        else [submodule(ffn, act) for ffn in ffns(model)]


def layer_widths(model: nn.Module) -> list[int]:
    """Neurons per layer: the input width of a dense layer's down projection, E·I (+ shared units) of a
    mixture-of-experts one."""
    down = architecture(model).down
    return [0 if ffn is None else expert_blocks.moe_width(ffn) if expert_blocks.probed(ffn)
            else widths(submodule(ffn, down))[0] for ffn in ffns(model)]


def ffn_width(model: nn.Module) -> int:
    """Neurons per FFN layer (the widest layer's where widths differ)."""
    return max(layer_widths(model))


def has_experts(model: nn.Module) -> bool:
    """Whether some decoder layer is a mixture of experts."""
    return any(ffn is not None and expert_blocks.probed(ffn) for ffn in ffns(model))


def module_paths(model: nn.Module) -> dict[str, str]:
    """Module paths of the three sites, for the cache metadata (MoE layers: what the experts module receives)."""
    found = architecture(model)
    ffn = layer_path(model, found.ffn_list or found.layers) + (f".{found.ffn}" if found.ffn else "")
    down = f"{ffn}.{found.down} (input)"
    if found.act is not None:
        nas = f"{ffn}.{found.act} (output)"
    elif found.gated:
        nas = f"{found.activation}({ffn}.{found.gate} (output))"
    else:
        nas = down
    paths = {"nas": nas, "nav": down if found.gated or found.act is None else nas}
    blocks = [block for block in ffns(model) if block is not None]
    moe = [expert_blocks.probed(block) for block in blocks]
    if any(moe) and expert_blocks.parallel_experts(blocks[0]) is None:   # JetMoe's rows: its sites above
        routed = f"a and z of the routed experts from {ffn}.experts (input), then the shared experts'"
        paths = {kind: routed if all(moe) else f"{path}; MoE layers: {routed}" for kind, path in paths.items()}
    return {**paths, "hidden": f"{layer_path(model, found.layers)} (output)"}


def checked_sites(model: nn.Module, named: Sites | None = None) -> Sites:
    """The sites of ``model``: ``named`` after checking each path in every layer (one line naming the first
    missing one), else those found by structure."""
    if named is None:
        return find_sites(model)
    refuse_unsupported(model_type(model), model.config)
    return checked_names(model, named)
