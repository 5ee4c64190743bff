"""Shared experts kept as stacks of 3-D weights (Inkling): ``gate_proj`` and ``up_proj`` (S, I, H), ``down_proj``
(S, H, I) and an activation module, called with the layer's tokens and a per-token gate γ (tokens, S) that scales
each shared expert's down projection input: z_s = act(gate_s x) · up_s x · γ_s.

Their neurons follow the routed experts' E·I: neuron ``E·I + s·I + j`` is unit j of shared expert s, active on
every token. a is the activation module's output, as the model computes it; z is the down projection's input as
the model computes it, γ included (a routed expert's routing weight, by contrast, scales its output).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one.pooling import pool

_STACKS = ("gate_proj", "up_proj", "down_proj")


def stacked_shared(ffn: nn.Module) -> nn.Module | None:
    """The child of an MoE block holding its shared experts as 3-D ``gate_proj``, ``up_proj``, ``down_proj`` and
    an ``act_fn`` module, or None."""
    return next((child for child in ffn.children() if isinstance(getattr(child, "act_fn", None), nn.Module)
                 and all(isinstance(getattr(child, name, None), torch.Tensor) and getattr(child, name).dim() == 3
                         for name in _STACKS)), None)


def stacked_width(shared: nn.Module) -> int:
    """S·I: the shared experts' units."""
    return shared.down_proj.shape[0] * shared.down_proj.shape[2]


def _tokens_major(states: torch.Tensor) -> torch.Tensor:
    """(S, tokens, I) -> (tokens, S·I): unit j of shared expert s at s·I + j."""
    return states.transpose(0, 1).reshape(states.shape[1], -1)


def stacked_hooks(shared: nn.Module, weights: Callable[[torch.device], torch.Tensor],
                  parts: dict[str, list[torch.Tensor]], kinds: tuple[str, ...]) -> list:
    """Hooks appending the shared experts' pooled NAS and NAV (poolings, batch, S·I) to ``parts``."""
    held: dict[str, torch.Tensor] = {}

    def on_shared(module, args, kwargs):
        x, gammas = (list(args) + list(kwargs.values()))[:2]
        held.update(x=x.reshape(1, -1, x.shape[-1]).expand(module.down_proj.shape[0], -1, -1), gammas=gammas)

    def on_act(module, inputs, a):
        w = weights(a.device)
        states = {"nas": lambda: a > 0, "nav": lambda: (a * _up(shared, held["x"]) * _gammas(shared, held)).abs()}
        for kind in ("nas", "nav"):
            if kind in kinds:
                parts.setdefault(kind, []).append(pool(w, _tokens_major(states[kind]()).reshape(*w.shape[1:], -1)))

    return [shared.register_forward_pre_hook(on_shared, with_kwargs=True),
            shared.act_fn.register_forward_hook(on_act)]


def _up(shared: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """up_s x, (S, tokens, I), as the shared experts compute it."""
    return torch.bmm(x, shared.up_proj.transpose(1, 2))


def _gammas(shared: nn.Module, held: dict[str, torch.Tensor]) -> torch.Tensor:
    """γ as (S, tokens, 1)."""
    return held["gammas"].reshape(-1, shared.down_proj.shape[0], 1).transpose(0, 1)


def stacked_edit_hook(shared: nn.Module, edit: Callable, units: torch.Tensor, neurons: torch.Tensor):
    """A hook applying ``edit`` to a of the chosen shared units (s·I + j, ``neurons`` their layer's indices)."""
    per_expert = shared.down_proj.shape[2]

    def on_act(module, inputs, a):
        a = a.clone()
        for expert in torch.unique(units // per_expert).tolist():
            chosen = units // per_expert == expert
            a[expert] = edit(a[expert], (units[chosen] % per_expert).to(a.device), neurons[chosen])
        return a

    return shared.act_fn.register_forward_hook(on_act)
