"""Several residual streams per token as one hidden state: a model that keeps N streams of width D per token
(DeepSeek-V4's and HY-V4's hyper-connections, ``hc_mult``; Gemma 3n's AltUp, ``altup_num_inputs``) has, as a
decoder layer's output, all N streams; its hidden state is their concatenation in the width (N·D), stream by
stream, as transformers' ``output_hidden_states`` holds them. Which axis holds the streams, structure cannot tell
(N may equal the batch or the token count): the config field that counts them says it."""

from __future__ import annotations

import torch
from torch import nn

# config field counting the streams -> where their axis sits in a layer's output
STREAM_AXES = {"hc_mult": "after tokens",          # (batch, tokens, N, D)
               "altup_num_inputs": "first"}        # (N, batch, tokens, D)


def stream_axis(model: nn.Module) -> str | None:
    """Where a layer's output keeps the model's residual streams (``STREAM_AXES``), or None for one stream."""
    config = model.config.get_text_config()
    return next((axis for field, axis in STREAM_AXES.items() if (getattr(config, field, None) or 1) > 1), None)


def joined(states: torch.Tensor, axis: str | None) -> torch.Tensor:
    """A layer's output with its streams concatenated in the width: (batch, tokens, N·D); unchanged for one
    stream (None) or when it has no stream axis (a 3-D tensor)."""
    if axis is None or states.dim() != 4:
        return states
    if axis == "first":
        states = states.permute(1, 2, 0, 3)
    return states.flatten(2)
