"""DBRX's mixture-of-experts layer: its experts module holds ``mlp``, a GLU whose weights are three 2-D stacks
``w1`` (gate), ``v1`` (up) and ``w2`` (down), each (E·I, H); the experts module runs it once per expert hit, on
that expert's routed tokens, with the expert's slices viewed (I, H): a = act(w1_e x), z = a · v1_e x, the
expert's output z @ w2_e times the routing weight.

So a and z are recomputed from those slices for the routed (token, expert) pairs, as for the eager experts of
experts.py, whose pooling of the routed rows and deactivation these probes share: neuron ``e·I + j`` is unit j
of expert e, and row e·I + j of ``w2`` is what it writes to the hidden size. Routing is the pooled routing
weights over the E experts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one.expert_blocks import glu_experts, glu_shape
from neuronxa.stage_one.experts import (Edit, ExpertMath, Store, edit_output, experts_inputs, pooled_routing,
                                        pooled_rows, recomputed_rows)


def _slice(experts: nn.Module, name: str, expert: int) -> torch.Tensor:
    """Expert e's (I, H) slice of the stack ``name`` (w1, v1 or w2)."""
    n_experts, units, hidden = glu_shape(experts)
    return getattr(experts.mlp, name).view(n_experts, units, hidden)[expert]


def _units(experts: nn.Module, expert: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m) of one expert on tokens x: a = act(w1_e x), m = v1_e x."""
    return experts.mlp.activation_fn(x @ _slice(experts, "w1", expert).T), x @ _slice(experts, "v1", expert).T


MATH = ExpertMath(lambda experts: glu_shape(experts)[:2], _units, lambda experts, e: _slice(experts, "w2", e))


def moe_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor], store: Store,
              kinds: tuple[str, ...]) -> list:
    """A hook that pools one DBRX layer's NAS and NAV (E·I expert neurons) and routing into ``store``, from what
    its experts module receives."""
    experts = glu_experts(ffn)
    n_experts = glu_shape(experts)[0]

    def on_experts(module, args, kwargs):
        x, index, routing = experts_inputs(args, kwargs)
        x, w = x.reshape(-1, x.shape[-1]), weights(x.device)
        for kind, pooled in pooled_rows(w, recomputed_rows(module, x, index, MATH), n_experts, kinds).items():
            store(kind, pooled)
        if "routing" in kinds:
            store("routing", pooled_routing(w, index, routing, n_experts))

    return [experts.register_forward_pre_hook(on_experts, with_kwargs=True)]


def edit_hooks(ffn: nn.Module, neurons: torch.Tensor, edit: Edit) -> list:
    """A hook applying ``edit`` to a of the chosen expert neurons e·I + j of one DBRX layer."""
    return [edit_output(glu_experts(ffn), edit, neurons, MATH)]
