"""The clamped SwiGLU that gpt-oss's experts and MiniMax-M3's experts and shared experts compute inside their
forward, with no activation module: a = g·σ(α·g) of the gate clamped from above (g = min(gate, limit)), and the
down projection's input z = a·(clamp(up, ±limit) + 1). gpt-oss names the two constants ``alpha`` and ``limit``,
MiniMax-M3 ``swiglu_alpha`` and ``swiglu_limit``. MiniMax-M3's shared experts and dense layers are dense FFNs of
this kind (one fused ``gate_up_proj``, the gate half first): their a is computed from that projection's output,
and an edited a' gives z = a'·(clamp(up, ±limit) + 1) at the down projection's input."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_NAMES = (("alpha", "limit"), ("swiglu_alpha", "swiglu_limit"))


def swiglu_parameters(module: nn.Module) -> tuple[float, float] | None:
    """(α, limit) of a module that computes a clamped SwiGLU, or None."""
    return next(((getattr(module, alpha), getattr(module, limit)) for alpha, limit in _NAMES
                 if hasattr(module, alpha) and hasattr(module, limit)), None)


def clamped_swiglu(module: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m): the activation and what multiplies it into the down projection's input z = a·m."""
    alpha, limit = swiglu_parameters(module)
    gate = gate.clamp(max=limit)
    return gate * torch.sigmoid(gate * alpha), up.clamp(-limit, limit) + 1


def fused_a(module: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """a from the output of a fused gate_up projection (the gate half first)."""
    return clamped_swiglu(module, *gate_up.chunk(2, dim=-1))[0]


def on_a(module: nn.Module, gate_up: nn.Module, down: nn.Module,
         edit: Callable[[torch.Tensor], torch.Tensor | None]) -> list:
    """Hooks handing each forward pass's a of a clamped-SwiGLU FFN (from its fused gate_up projection's output)
    to ``edit``; where ``edit`` returns a tensor a', the down projection receives z = a'·m instead."""
    held: dict[str, torch.Tensor] = {}

    def on_gate_up(projection, inputs, output):
        a, multiplier = clamped_swiglu(module, *output.chunk(2, dim=-1))
        edited = edit(a)
        if edited is not None:
            held["z"] = edited * multiplier

    def on_down(projection, inputs):
        z = held.pop("z", None)
        return None if z is None else (z.to(inputs[0].dtype), *inputs[1:])

    return [gate_up.register_forward_hook(on_gate_up), down.register_forward_pre_hook(on_down)]
