"""The clamped SwiGLU that gpt-oss's experts and MiniMax-M3's experts and shared experts compute inside their
forward, with no activation module: a = g·σ(α·g) of the gate clamped from above (g = min(gate, limit)), and the
down projection's input z = a·(clamp(up, ±limit) + 1). gpt-oss names the two constants ``alpha`` and ``limit``,
MiniMax-M3 ``swiglu_alpha`` and ``swiglu_limit``. HY-V4's experts name ``swiglu_limit`` alone (no activation
module): a = SiLU(min(gate, limit)) (α = 1) and z = a·clamp(up, ±limit), without the 1 added to up. MiniMax-M3's
shared experts and dense layers are dense FFNs of this kind (one fused ``gate_up_proj``, the gate half first):
their a is computed from that projection's output, and an edited a' gives z = a'·(clamp(up, ±limit) + 1) at the
down projection's input. DeepSeek-V4's experts clamp gate and up the same way before their activation module
(``limited_act``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_NAMES = (("alpha", "limit"), ("swiglu_alpha", "swiglu_limit"))


def swiglu_parameters(module: nn.Module) -> tuple[float, float, float] | None:
    """(α, limit, what is added to the clamped up) of a module that computes a clamped SwiGLU, or None."""
    found = next(((getattr(module, alpha), getattr(module, limit), 1.0) for alpha, limit in _NAMES
                  if hasattr(module, alpha) and hasattr(module, limit)), None)
    if found is None and hasattr(module, "swiglu_limit") and not hasattr(module, "act_fn"):   # HY-V4
        return 1.0, module.swiglu_limit, 0.0
    return found


def clamped_swiglu(module: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m): the activation and what multiplies it into the down projection's input z = a·m."""
    alpha, limit, offset = swiglu_parameters(module)
    gate = gate.clamp(max=limit)
    return gate * torch.sigmoid(gate * alpha), up.clamp(-limit, limit) + offset


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


def limited_act(experts: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m) of experts with an activation module: ``act_fn(gate)`` and up, both clamped first where the experts
    keep a numeric ``limit`` (DeepSeek-V4: gate from above, up to ±limit, as its forward does)."""
    limit = getattr(experts, "limit", None)
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    return experts.act_fn(gate), up
