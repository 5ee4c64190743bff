"""Decoder layers that a model's forward pass skips on text alone: Mllama's (Llama 3.2 Vision's) cross-attention
layers, which run only on image states. Each keeps its index, with no FFN states (width 0, as a layer without an
FFN: ``Sites.without``) and, as its hidden state, the residual stream it passes on unchanged (the previous layer's
output; for the first layers, the input of the first layer that runs). Structure cannot tell them (they hold an
FFN): ``SKIPPED_ON_TEXT`` names, by model type, the config field that lists them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.errors import NeuronXAError

# model type -> the field of its text config listing the decoder layers its forward pass skips on text alone
SKIPPED_ON_TEXT = dict.fromkeys(["mllama", "mllama_text_model"], "cross_attention_layers")


def skipped_layers(config) -> tuple[int, ...]:
    """The decoder layers that a model of ``config`` skips on text alone (none for most types)."""
    field = SKIPPED_ON_TEXT.get(getattr(config, "model_type", None))
    return tuple(sorted(getattr(config.get_text_config(), field, None) or ())) if field else ()


def with_skipped(config, without: tuple[int, ...]) -> tuple[int, ...]:
    """The layers without FFN states: those without an FFN and those skipped on text alone."""
    return tuple(sorted({*without, *skipped_layers(config)}))


def entry_hooks(layers: nn.ModuleList, skipped: tuple[int, ...], store: Callable[[torch.Tensor], None]) -> list:
    """Where layer 0 is skipped: a hook handing ``store`` the residual stream that the first layers pass on (the
    hidden-state input of the first layer that runs); no hook otherwise."""
    if 0 not in skipped:
        return []
    first = next((index for index in range(len(layers)) if index not in skipped), None)
    if first is None:
        raise NeuronXAError("every decoder layer is skipped on text alone (cross_attention_layers lists them all): "
                            "no states to read")

    def on_input(module, args, kwargs):
        store(args[0] if args else kwargs["hidden_states"])

    return [layers[first].register_forward_pre_hook(on_input, with_kwargs=True)]


def passed_on(hidden: list, skipped: tuple[int, ...]) -> list:
    """Each layer's pooled hidden states, a skipped layer's (still None) being the previous layer's."""
    hidden = list(hidden)
    for layer in skipped:   # in order, so that consecutive skipped layers pass the same stream on
        if layer < len(hidden) and hidden[layer] is None and layer > 0:
            hidden[layer] = hidden[layer - 1]
    return hidden
