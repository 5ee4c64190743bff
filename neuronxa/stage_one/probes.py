"""FFN probes: forward hooks that pool each decoder layer's neuron states while the model runs.

Sites, named as TransformerLens names them (``blocks.{layer}...``):
- ``mlp.hook_act``: the activation ``a`` (output of the activation function; ``act_fn(gate_proj x)`` when gated).
  NAS per token is ``1[a > 0]``.
- ``mlp.hook_post``: the intermediate ``z`` (input of the down projection; ``a * up_proj x`` when gated, ``a``
  otherwise). NAV per token is ``|z|``.
- ``hook_resid_post``: the decoder layer's output (the residual stream), for the embedding baselines.
Per-token states never leave the device: each hook contracts them at once with the pooling weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import experts   # which uses this module's layout helpers, at call time
from neuronxa.stage_one.pooling import pool

KINDS = ("nas", "nav", "hidden")
MOE_KINDS = (*KINDS, "routing")   # mixture-of-experts models add their layers' pooled routing weights
SITE_NAMES = {
    "nas": "blocks.{layer}.mlp.hook_act > 0",
    "nav": "|blocks.{layer}.mlp.hook_post|",
    "hidden": "blocks.{layer}.hook_resid_post",
}


@dataclass(frozen=True)
class Architecture:
    """Where the FFN modules sit: layers under the base model, then (within a layer) FFN, act, down."""

    layers: str
    ffn: str
    act: str
    down: str
    gated: bool


_GATED = Architecture("layers", "mlp", "act_fn", "down_proj", True)
_GATED_FUSED = Architecture("layers", "mlp", "activation_fn", "down_proj", True)
ARCHITECTURES = {
    **{name: _GATED for name in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "olmo3",
        "granite", "cohere", "stablelm", "smollm3",
    )},
    "gemma3": Architecture("language_model.layers", "mlp", "act_fn", "down_proj", True),
    **{name: _GATED_FUSED for name in ("glm", "glm4", "phi3")},
    "gpt2": Architecture("h", "mlp", "act", "c_proj", False),
    "bloom": Architecture("h", "mlp", "gelu_impl", "dense_4h_to_h", False),
    "xglm": Architecture("layers", "", "activation_fn", "fc2", False),
    "opt": Architecture("decoder.layers", "", "activation_fn", "fc2", False),
    # mixture-of-experts: the layout of their dense FFN layers; MoE layers are found by structure (experts.py)
    **{name: _GATED for name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")},
    "granitemoe": Architecture("layers", "block_sparse_moe", "act_fn", "down_proj", True),
    "jamba": Architecture("layers", "feed_forward", "act_fn", "down_proj", True),
}


def submodule(module: nn.Module, path: str) -> nn.Module:
    """``module.a.b`` for ``path='a.b'`` (the empty path is the module itself)."""
    for name in filter(None, path.split(".")):
        module = getattr(module, name)
    return module


def architecture(model: nn.Module) -> Architecture:
    """The FFN layout of a model, or a clear error naming its unsupported model type."""
    return architecture_of(getattr(model.config, "model_type", type(model).__name__))


def architecture_of(model_type: str) -> Architecture:
    """The FFN layout of a model type (as ``config.json`` names it), checked before any weights load."""
    if model_type not in ARCHITECTURES:
        raise NeuronXAError(
            f"model type {model_type!r} has no known FFN probe site; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def kinds_of(model: nn.Module) -> tuple[str, ...]:
    """The state kinds a model gives: ``routing`` too when some layer is a mixture of experts."""
    arch = architecture(model)
    moe = any(experts.experts_module(submodule(layer, arch.ffn)) is not None for layer in decoder_layers(model))
    return MOE_KINDS if moe else KINDS


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (under its base model, which has no LM head)."""
    return submodule(model.base_model, architecture(model).layers)


def act_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's activation module (its output is a)."""
    arch = architecture(model)
    return [submodule(submodule(layer, arch.ffn), arch.act) for layer in decoder_layers(model)]


def ffn_width(model: nn.Module) -> int:
    """Neurons per FFN layer: the input width of the down projection."""
    arch = architecture(model)
    return _dense_width(submodule(decoder_layers(model)[0], arch.ffn), arch)


def layer_widths(model: nn.Module) -> list[int]:
    """Neurons per layer: the FFN width of a dense layer, E·I (+ shared units) of a mixture-of-experts one."""
    arch = architecture(model)
    ffns = [submodule(layer, arch.ffn) for layer in decoder_layers(model)]
    return [experts.moe_width(ffn) if experts.experts_module(ffn) is not None else _dense_width(ffn, arch)
            for ffn in ffns]


def _dense_width(ffn: nn.Module, arch: Architecture) -> int:
    down = submodule(ffn, arch.down)
    return down.in_features if hasattr(down, "in_features") else down.weight.shape[0]  # GPT-2's Conv1D


def module_paths(model: nn.Module) -> dict[str, str]:
    """Module paths of the three sites, for the cache metadata."""
    arch = architecture(model)
    ffn = f"{arch.layers}.{{layer}}" + (f".{arch.ffn}" if arch.ffn else "")
    down = f"{ffn}.{arch.down} (input)" if arch.gated else f"{ffn}.{arch.act} (output)"
    return {"nas": f"{ffn}.{arch.act} (output)", "nav": down, "hidden": f"{arch.layers}.{{layer}} (output)"}


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
        every = list(decoder_layers(model))
        self.layers = every[:layers]
        self.stops_early = len(self.layers) < len(every)
        self.weights: torch.Tensor | None = None
        self._weights_by_device: dict[torch.device, torch.Tensor] = {}
        self._pooled: dict[str, list[torch.Tensor | None]] = {}

    def _store(self, kind: str, layer: int, states: torch.Tensor) -> None:
        if kind in self.kinds:
            # with device_map, layers may sit on several devices: pool where the states are, gather on the first
            self._pooled[kind][layer] = pool(self._weights_on(states.device), states).to(self.weights.device)

    def _store_pooled(self, kind: str, layer: int, pooled: torch.Tensor) -> None:
        """Keep states pooled elsewhere (poolings, batch, width), gathered on the first device."""
        if kind in self.kinds:
            self._pooled[kind][layer] = pooled.to(self.weights.device)

    def _weights_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._weights_by_device:
            self._weights_by_device[device] = self.weights.to(device)
        return self._weights_by_device[device]

    def _hooks(self, index: int, layer: nn.Module):
        ffn = submodule(layer, self.arch.ffn)
        if experts.experts_module(ffn) is not None:
            store = lambda kind, pooled: self._store_pooled(kind, index, pooled)
            return experts.moe_hooks(ffn, self._weights_on, store, self.kinds) + self._layer_hooks(index, layer)

        def on_act(module, inputs, output):
            self._store("nas", index, output > 0)
            if not self.arch.gated:
                self._store("nav", index, output.abs())

        def on_down(module, inputs):
            self._store("nav", index, inputs[0].abs())

        handles = [submodule(ffn, self.arch.act).register_forward_hook(on_act)]
        if self.arch.gated:
            handles.append(submodule(ffn, self.arch.down).register_forward_pre_hook(on_down))
        return handles + self._layer_hooks(index, layer)

    def _layer_hooks(self, index: int, layer: nn.Module) -> list:
        def on_layer(module, inputs, output):
            self._store("hidden", index, output[0] if isinstance(output, tuple) else output)
            if self.stops_early and index == len(self.layers) - 1:
                raise StopForward

        return [layer.register_forward_hook(on_layer)]

    @contextmanager
    def attached(self):
        """Hooks on for the duration of the block, removed afterwards even on error."""
        handles = [h for index, layer in enumerate(self.layers) for h in self._hooks(index, layer)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def reset(self, weights: torch.Tensor) -> None:
        """Start a batch with pooling weights of shape (poolings, batch, tokens)."""
        self.weights = weights
        self._weights_by_device = {weights.device: weights}
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
        empty on dense layers)."""
        if "routing" in self._pooled:   # a dense layer of a mixture-of-experts model routes nothing
            empty = self.weights.new_zeros(*self.weights.shape[:2], 0)
            self._pooled["routing"] = [empty if s is None else s for s in self._pooled["routing"]]
        missing = [kind for kind, states in self._pooled.items() if any(s is None for s in states)]
        if missing:
            raise NeuronXAError(f"probe sites of {', '.join(missing)} did not fire: is the FFN layout unusual?")
        return {kind: torch.stack(states) if len({s.shape for s in states}) == 1 else states
                for kind, states in self._pooled.items()}
