"""What a module's structure tells about it as a feed-forward network (FFN): its projections' widths, its down
and input projections, its activation module. Shared by the search for a model's probe sites (sites.py) and by
the mixture-of-experts probes, which find a block's shared experts the same way (experts.py)."""

from __future__ import annotations

import re

from torch import nn

_ACT_CLASS = re.compile(r"act|gelu|relu|silu|swish|sigmoid|tanh|glu|xielu", re.IGNORECASE)
_NOT_ACT = (nn.Linear, nn.Dropout, nn.LayerNorm, nn.Embedding, nn.Identity)


def model_type(model: nn.Module) -> str:
    """The model's type as its config names it (its class name where it has none)."""
    return getattr(model.config, "model_type", type(model).__name__)


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
    linear = _linear(ffn)
    downs = [name for name, (i, o) in linear.items() if o == hidden and i != hidden]
    for down in downs:
        width = linear[down][0]
        inputs = [name for name, (i, o) in linear.items() if i == hidden and o in (width, 2 * width)]
        if inputs:
            return down, inputs, width
    return None


def _linear(module: nn.Module) -> dict[str, tuple[int, int]]:
    """The widths of the module's Linear (or Conv1D) children, by name."""
    return {name: widths(child) for name, child in module.named_children() if widths(child)}


def act_module(ffn: nn.Module) -> str | None:
    """The name of the FFN's activation module (a child without children or projections whose class is named as
    an activation), if it has one."""
    for name, child in ffn.named_children():
        if not isinstance(child, _NOT_ACT) and not widths(child) and not list(child.children()) \
                and _ACT_CLASS.search(type(child).__name__):
            return name
    return None


def split_ffn(ffn: nn.Module, hidden: int) -> tuple[str, list[str], int, str] | None:
    """An FFN split over two children (BERT's ``intermediate`` and ``output``, CPM-Ant's ``w_in`` and ``w_out``):
    the down projection (from the width to ``hidden``: another child, or its Linear child), the input projections
    (from ``hidden`` to the width, or twice it when fused) and the activation module held by one child, and the
    width, as paths within ``ffn``; None when it has no such pair. Projections from ``hidden`` to ``hidden`` (an
    attention's) are never taken."""
    children = dict(ffn.named_children())
    for name, child in children.items():
        inputs = {f"{name}.{sub}": out for sub, (i, out) in _linear(child).items() if i == hidden and out != hidden}
        if not inputs or (act := act_module(child)) is None:
            continue
        for other, module in children.items():
            downs = {other: widths(module)} if widths(module) else \
                {f"{other}.{sub}": pair for sub, pair in _linear(module).items()}
            for down, (width, out) in downs.items():
                if other != name and out == hidden and width != hidden \
                        and all(size in (width, 2 * width) for size in inputs.values()):
                    return down, list(inputs), width, f"{name}.{act}"
    return None


def ffn_parts(ffn: nn.Module, hidden: int) -> tuple[str, list[str], int, str | None] | None:
    """The FFN's down projection, input projections, width and activation module (None where a function computes
    a): its own children's (``projections``, ``act_module``), else those of an FFN split over two children
    (``split_ffn``); None when it has neither."""
    if (found := projections(ffn, hidden)) is not None:
        return (*found, act_module(ffn))
    return split_ffn(ffn, hidden)
