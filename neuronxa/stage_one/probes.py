"""FFN probes: forward hooks that pool each decoder layer's neuron states while the model runs.

Sites, named as TransformerLens names them (``blocks.{layer}...``):
- ``mlp.hook_act``: the activation ``a`` (output of the activation function; ``act_fn(gate_proj x)`` when gated).
  NAS per token is ``1[a > 0]``.
- ``mlp.hook_post``: the intermediate ``z`` (input of the down projection; ``a * up_proj x`` when gated, ``a``
  otherwise). NAV per token is ``|z|``.
- ``hook_resid_post``: the decoder layer's output (the residual stream), for the embedding baselines; where a
  model keeps several residual streams per token, all of them, concatenated in the width (streams.py).
Per-token states never leave the device: each hook contracts them at once with the pooling weights. Where the
model computes them under another leading shape (OPT flattens batch and tokens; XLNet runs its layers on
(tokens, batch, width), which structure cannot tell: ``TOKENS_FIRST``), they are reshaped to (batch, tokens, width)
first; where they run on more positions than the input has tokens (``positions.py``), the input's are kept.
``on_a`` is the one hook point of a per layer, for probes and interventions alike. A layer that runs several times
in one forward pass (HRM-Text's) gives one probed layer per run, numbered as the model numbers its runs (runs.py);
layers that run on patches of tokens (BLT's global transformer) pool with the weights of each patch's tokens
(patches.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import expert_blocks, experts, glu_experts, parallel_experts, scaled_experts, swiglu
from neuronxa.stage_one.ffn_lists import layer_ffn
from neuronxa.stage_one.options import SITE_NAMES
from neuronxa.stage_one.patches import patch_hooks, patch_weights, patched_layers
from neuronxa.stage_one.pooling import pool
from neuronxa.stage_one.positions import input_positions
from neuronxa.stage_one.runs import Run, counting, layer_runs, probed_layers
from neuronxa.stage_one.sites import (
    Sites,
    act_modules,
    architecture,
    decoder_layers,
    ffn_width,
    has_experts,
    layer_widths,
    model_type,
    module_paths,
    submodule,
    widths,
)
from neuronxa.stage_one.skipped import entry_hooks, passed_on, skipped_layers
from neuronxa.stage_one.streams import joined, stream_axis

__all__ = ["KINDS", "MOE_KINDS", "SITE_NAMES", "PoolingProbe", "StopForward", "act_modules", "architecture",
           "decoder_layers", "edit_hooks", "ffn_width", "kinds_of", "layer_ffn", "layer_widths", "module_paths",
           "on_a", "submodule"]

KINDS = ("nas", "nav", "hidden")
MOE_KINDS = (*KINDS, "routing")   # mixture-of-experts models add their layers' pooled routing weights
TOKENS_FIRST = {"xlnet"}   # model types whose layers run on (tokens, batch, width) states


def on_a(ffn: nn.Module, found: Sites, edit: Callable[[torch.Tensor], torch.Tensor | None]) -> list:
    """Hooks that hand each forward pass's a of a decoder layer's FFN (``layer_ffn``) to ``edit``; where ``edit``
    returns a tensor, it replaces a downstream (the FFN then computes z from it). Returns the hook handles.

    a is the output of the act module where there is one; else the down projection's input when not gated; else
    (gated, a computed by a function) the activation of the gate projection's output, and an edited a gives
    z = a' * up x at the down projection's input."""
    down = submodule(ffn, found.down)
    if found.act is not None:
        return [submodule(ffn, found.act).register_forward_hook(lambda module, inputs, output: edit(output))]
    if not found.gated:
        def edit_z(module, inputs):
            edited = edit(inputs[0])
            return None if edited is None else (edited, *inputs[1:])
        return [down.register_forward_pre_hook(edit_z)]
    if expert_blocks.swiglu_ffn(ffn):   # a clamped SwiGLU computed in the forward (MiniMax-M3's dense layers)
        return swiglu.on_a(ffn, submodule(ffn, found.gate), down, edit)
    from transformers.activations import ACT2FN

    width, activation, held = widths(down)[0], ACT2FN[found.activation], {}

    def on_gate(module, inputs, output):
        held["a"] = edit(activation(output[..., :width]))   # fused gate_up: the gate's half comes first

    def on_up(module, inputs, output):
        held["up"] = output[..., -width:]

    def z_from_edited(module, inputs):
        edited, up = held.pop("a", None), held.pop("up", None)
        return None if edited is None else (edited * up, *inputs[1:])

    return [submodule(ffn, found.gate).register_forward_hook(on_gate),
            submodule(ffn, found.up).register_forward_hook(on_up), down.register_forward_pre_hook(z_from_edited)]


def kinds_of(model: nn.Module) -> tuple[str, ...]:
    """The state kinds a model gives: ``routing`` too when some layer is a mixture of experts."""
    return MOE_KINDS if has_experts(model) else KINDS


def edit_hooks(model: nn.Module, edits: Mapping[int, tuple[torch.Tensor, experts.Edit]]) -> list:
    """Hooks applying, per layer, ``edit`` (a, units, neurons) -> a to the activation a of its chosen ``neurons``
    (layer -> (sorted neuron indices, edit)), in every kind of layer: dense FFN neurons through ``on_a`` (of a
    layer that runs several times, on the run that is that layer only: runs.py); expert neurons e·I + j of MoE
    layers and their shared experts' units after them (see ``experts.edit_hooks``)."""
    found = architecture(model)   # the sites once: each lookup walks the module tree
    empty = sorted(index for index, (neurons, _) in edits.items() if len(neurons) and index in found.without)
    if empty:   # before any hook is attached
        raise NeuronXAError(f"decoder layer {empty[0]} has no FFN, so no neurons (its mixer is another "
                            "kind, or the forward pass skips it on text alone)")
    runs = layer_runs(model, submodule(model.base_model, found.layers))
    chosen = [(layer_ffn(model.base_model, found, run.slots[0], layer), run, picked) for layer, run in runs
              if (picked := {slot: edits[slot] for slot in run.slots if slot in edits and len(edits[slot][0])})]
    if any(expert_blocks.probed(ffn) and len(run.slots) > 1 for ffn, run, _ in chosen):   # HRM-Text is dense
        raise NeuronXAError("expert neurons of a layer that runs several times in one forward pass cannot be "
                            "edited run by run: not supported")
    handles = counting(model, runs)
    for ffn, run, picked in chosen:
        if expert_blocks.probed(ffn):
            handles += _moe_module(ffn).edit_hooks(ffn, *picked[run.slots[0]])
        else:
            handles += on_a(ffn, found, lambda a, run=run, picked=picked: _edited(a, picked.get(run())))
    return handles


def _edited(a: torch.Tensor, chosen: tuple[torch.Tensor, experts.Edit] | None) -> torch.Tensor | None:
    """a edited at the chosen neurons (None: left as it is)."""
    if chosen is None:
        return None
    neurons, edit = chosen
    return edit(a, neurons.to(a.device), neurons)


def _moe_module(ffn: nn.Module):
    """The module whose ``moe_hooks`` and ``edit_hooks`` probe a mixture-of-experts block: JetMoe's pair of
    parallel experts (parallel_experts.py), DBRX's GLU of 2-D stacks (glu_experts.py), experts called with every
    token for every expert (Llama 4, scaled_experts.py), else one experts module called with the routed tokens
    (experts.py)."""
    if expert_blocks.parallel_experts(ffn) is not None:
        return parallel_experts
    if expert_blocks.glu_experts(ffn) is not None:
        return glu_experts
    return scaled_experts if expert_blocks.scaled(ffn) else experts


class StopForward(Exception):
    """Raised by the last probed layer when later layers are not wanted: the forward pass ends there."""


class PoolingProbe:
    """Pools NAS, NAV and hidden states of every decoder layer (or the first ``layers``) during a forward pass.

    Use as ``with probe.attached(): probe.reset(w); probe.run(model.base_model, ...)``, then ``probe.collect()``.
    """

    def __init__(self, model: nn.Module, kinds: tuple[str, ...] = KINDS, layers: int | None = None) -> None:
        self.model = model
        self.arch = architecture(model)
        self.kinds = kinds
        every = probed_layers(model, decoder_layers(model))   # each run of a layer that runs several times
        self.layers = every[:layers]
        self.stops_early = len(self.layers) < len(every)
        self.runs = [(layer, run) for layer, run in layer_runs(model, decoder_layers(model))
                     if run.slots[0] < len(self.layers)]
        self.tokens_first = model_type(model) in TOKENS_FIRST
        self.stream_axis = stream_axis(model)
        self.input_positions = input_positions(model)   # ProphetNet's main stream, CPM-Ant's input after its prompt
        self.skipped = skipped_layers(model.config)   # on text alone: no FFN states, the stream passed on
        self.patched = patched_layers(model)   # layers over patches of tokens: pooled with patch weights
        # the last probed layer that runs (one the forward pass skips stores nothing): where to stop early
        self.last_run = max((i for i in range(len(self.layers)) if i not in self.skipped), default=len(every))
        self.weights: torch.Tensor | None = None
        self.patch_weights: torch.Tensor | None = None
        self._weights_by_device: dict[tuple[torch.device, bool], torch.Tensor] = {}
        self._pooled: dict[str, list[torch.Tensor | None]] = {}

    def _store(self, kind: str, layer: int, states: torch.Tensor) -> None:
        if kind in self.kinds:
            if self._pooled[kind][layer] is not None:
                raise NeuronXAError(f"decoder layer {layer} ran twice in one forward pass (a recurrent model?): "
                                    "its FFN states per token are not defined")
            patched = layer in self.patched
            weights = self.patch_weights if patched else self.weights
            if self.input_positions is not None:
                states = self.input_positions(states, weights.shape[-1])
            if states.numel() != weights[0].numel() * states.shape[-1]:
                raise NeuronXAError(f"decoder layer {layer}'s {kind} states have shape {tuple(states.shape)}, not "
                                    "(batch, tokens, width) (several residual streams?): not supported")
            if self.tokens_first:
                states = states.transpose(0, 1)
            # with device_map, layers may sit on several devices: pool where the states are, gather on the first
            states = states.reshape(*weights.shape[1:], states.shape[-1])   # e.g. OPT's (batch·tokens, width)
            self._store_pooled(kind, layer, pool(self._weights_on(states.device, patched), states))

    def _store_pooled(self, kind: str, layer: int, pooled: torch.Tensor) -> None:
        """Keep states pooled elsewhere (poolings, batch, width), gathered on the first device."""
        if kind in self.kinds:
            self._pooled[kind][layer] = pooled.to(self.weights.device)

    def _weights_on(self, device: torch.device, patched: bool = False) -> torch.Tensor:
        """The pooling weights (over patches where ``patched``) on ``device``, moved there once per batch."""
        if (device, patched) not in self._weights_by_device:
            weights = self.patch_weights if patched else self.weights
            self._weights_by_device[device, patched] = weights.to(device)
        return self._weights_by_device[device, patched]

    def _on_patches(self, patch_ids: torch.Tensor, patches: int) -> None:
        """The batch's patches are cut: the weights of the layers over patches."""
        self.patch_weights = patch_weights(self.weights, patch_ids, patches)
        self._weights_by_device = {key: value for key, value in self._weights_by_device.items() if not key[1]}

    def _hooks(self, run: Run, layer: nn.Module) -> list:
        """The probes of ``layer``, storing into the probed layer of its current run (``run()``)."""
        index = run.slots[0]
        if index in self.skipped:   # never runs: its hidden state is the stream it passes on (skipped.py)
            return entry_hooks(decoder_layers(self.model), self.skipped, lambda x: self._store("hidden", 0, x)) \
                if index == 0 else []
        if index in self.arch.without:   # no FFN: no neurons (collect gives it width 0)
            return self._layer_hooks(run, layer)
        ffn = layer_ffn(self.model.base_model, self.arch, index, layer)
        if expert_blocks.probed(ffn):
            store = lambda kind, pooled: self._store_pooled(kind, run(), pooled)
            hooks = _moe_module(ffn).moe_hooks(ffn, self._weights_on, store, self.kinds)
            return hooks + self._layer_hooks(run, layer)
        a_is_z = not self.arch.gated

        def on_act(a: torch.Tensor) -> None:
            index = run()
            self._store("act", index, a)   # a itself: not cached, for mean activations
            self._store("nas", index, a > 0)
            if a_is_z:
                self._store("nav", index, a.abs())

        def on_down(module, inputs):
            self._store("nav", run(), inputs[0].abs())

        handles = on_a(ffn, self.arch, on_act)
        if not a_is_z:
            handles.append(submodule(ffn, self.arch.down).register_forward_pre_hook(on_down))
        return handles + self._layer_hooks(run, layer)

    def _layer_hooks(self, run: Run, layer: nn.Module) -> list:
        def on_layer(module, inputs, output):
            index = run()
            output = output[0] if isinstance(output, (tuple, list)) else output
            self._store("hidden", index, joined(output, self.stream_axis))
            if self.stops_early and index == self.last_run:
                raise StopForward

        return [layer.register_forward_hook(on_layer)]

    @contextmanager
    def attached(self):
        """Hooks on for the duration of the block, removed afterwards even on error."""
        handles = counting(self.model, self.runs) + patch_hooks(self.model, self._on_patches)
        handles += [h for layer, run in self.runs for h in self._hooks(run, layer)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def reset(self, weights: torch.Tensor) -> None:
        """Start a batch with pooling weights of shape (poolings, batch, tokens)."""
        self.weights = weights
        self._weights_by_device = {(weights.device, False): weights}
        self._pooled = {kind: [None] * len(self.layers) for kind in self.kinds}

    def run(self, module: nn.Module, **inputs) -> None:
        """A forward pass of ``module`` that ends after the last probed layer."""
        try:
            module(**inputs)
        except StopForward:
            pass

    def collect(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Pooled states of the batch: ``kind -> (layers, poolings, batch, width)``, still on the device; a list
        of (poolings, batch, width of the layer) where widths differ (mixture-of-experts models; ``routing`` is
        empty on dense layers, every kind but ``hidden`` on layers without an FFN)."""
        empty = self.weights.new_zeros(*self.weights.shape[:2], 0)
        if "hidden" in self._pooled:
            self._pooled["hidden"] = passed_on(self._pooled["hidden"], self.skipped)
        for kind, states in self._pooled.items():   # dense layers route nothing; no FFN, no neurons
            empty_at = {*range(len(states))} if kind == "routing" else set() if kind == "hidden" else self.arch.without
            self._pooled[kind] = [empty if s is None and layer in empty_at else s for layer, s in enumerate(states)]
        missing = [kind for kind, states in self._pooled.items() if any(s is None for s in states)]
        if missing:
            raise NeuronXAError(f"probe sites of {', '.join(missing)} did not fire: is the FFN layout unusual?")
        return {kind: torch.stack(states) if len({s.shape for s in states}) == 1 else states
                for kind, states in self._pooled.items()}
