"""What a module's structure tells about it as a feed-forward network (FFN): its projections' widths, its down
and input projections, its activation module. Shared by the search for a model's probe sites (sites.py) and by
the mixture-of-experts probes, which find a block's shared experts the same way (experts.py)."""

from __future__ import annotations

import re

from torch import nn

_ACT_CLASS = re.compile(r"act|gelu|relu|silu|swish|sigmoid|tanh|glu|xielu", re.IGNORECASE)
_NOT_ACT = (nn.Linear, nn.Dropout, nn.LayerNorm, nn.Embedding, nn.Identity)


def submodule(module: nn.Module, path: str) -> nn.Module:
    """``module.a.b`` for ``path='a.b'`` (the empty path is the module itself)."""
    for name in filter(None, path.split(".")):
        module = getattr(module, name)
    return module


def widths(module: nn.Module) -> tuple[int, int] | None:
    """(input, output) width of a Linear or GPT-2 Conv1D (whose weight is stored transposed), else None; a layer
    that ``peft`` wraps (e.g. LoRA) has the widths of the layer it wraps."""
    module = getattr(module, "base_layer", module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)
    return None


def projections(ffn: nn.Module, hidden: int) -> tuple[str, list[str], int] | None:
    """The FFN's down projection (from its width to ``hidden``), its input projections (from ``hidden`` to the
    width, or twice it when gate and up are fused) and its width, from the FFN's own Linear children; None when
    it has no such pair."""
    linear = {name: widths(child) for name, child in ffn.named_children() if widths(child)}
    downs = [name for name, (i, o) in linear.items() if o == hidden and i != hidden]
    for down in downs:
        width = linear[down][0]
        inputs = [name for name, (i, o) in linear.items() if i == hidden and o in (width, 2 * width)]
        if inputs:
            return down, inputs, width
    return None


def act_module(ffn: nn.Module) -> str | None:
    """The name of the FFN's activation module (a child without children or projections whose class is named as
    an activation), if it has one."""
    for name, child in ffn.named_children():
        if not isinstance(child, _NOT_ACT) and not widths(child) and not list(child.children()) \
                and _ACT_CLASS.search(type(child).__name__):
            return name
    return None
