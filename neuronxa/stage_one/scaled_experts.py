"""Mixture-of-experts blocks that call their experts with every token for every expert (Llama 4).

The block's router gives each token one logit per expert and keeps its top k: the routing weight is σ(logit) for
those, 0 for the others. The block stacks E copies of its tokens, each scaled by the token's routing weight for
that expert, and hands them to the experts module, which computes all E·N rows (E, N, ·): gate and up from the
scaled token, a = act(gate), z = up·a, and the down projection. A neuron (e, j) is active on a token only where
the router chose e for it: a is read from the experts' activation module on those rows only, z = up·a with up
computed for those rows (the rows of unchosen experts receive a zero token: their up and z are 0). As for the
other MoE blocks (experts.py), NAS and NAV are pooled into E·I expert neurons, then the shared expert's units,
and routing is the routing weight over the E experts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one import experts
from neuronxa.stage_one.expert_blocks import expert_shape, experts_module, router, shared_module

Rows = experts.Rows


def chosen(block: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """(N, k): each token's top-k experts, as the router chooses them from its logits."""
    top_k = getattr(router(block), "top_k", None) or block.top_k
    return torch.topk(logits, top_k, dim=1).indices


def routed_rows(module: nn.Module, scaled_in: torch.Tensor, a: torch.Tensor, index: torch.Tensor) -> Rows:
    """a and z of the routed (token, expert) pairs: a as the experts' activation module gave it (E, N, I), z = up·a
    with up from the pair's scaled token and its expert's up projection."""
    n_experts, units = expert_shape(module)
    tokens = scaled_in.view(n_experts, -1, scaled_in.shape[-1])
    none = index.new_zeros(0)
    parts = [(a.new_zeros(0, units), a.new_zeros(0, units), none, none)]   # no pair routed: no rows
    for expert, token, _ in experts.routed_pairs(index, n_experts):
        up = tokens[expert, token] @ module.gate_up_proj[expert, :, units:]
        parts.append((a[expert, token], up * a[expert, token], token, torch.full_like(token, expert)))
    return tuple(torch.cat(part) for part in zip(*parts))


def moe_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor], store: experts.Store,
              kinds: tuple[str, ...]) -> list:
    """Hooks that pool one block's NAS, NAV (routed experts, then shared) and routing into ``store``."""
    module, held, parts = experts_module(ffn), {}, {}
    n_experts = expert_shape(module)[0]

    def on_router(gate, inputs, output):
        scores, logits = output
        held.update(index=chosen(ffn, logits), scores=scores)

    def on_experts(called, inputs):
        held["input"] = inputs[0]   # the E scaled copies of the tokens (E·N, H)

    def on_act(act, inputs, output):
        rows = routed_rows(module, held.pop("input"), output, held["index"])
        parts.update(experts.pooled_rows(weights(output.device), rows, n_experts, kinds))

    def on_block(block, inputs, output):
        index, scores = held.pop("index"), held.pop("scores")
        if "routing" in kinds:
            w = weights(index.device)
            store("routing", experts.pooled_routing(w, index, scores.gather(1, index), n_experts))
        for kind in ("nas", "nav"):
            if kind in parts:
                store(kind, torch.cat([parts.pop(kind), *shared.get(kind, [])], dim=-1))

    shared: dict[str, list[torch.Tensor]] = {}
    handles = [ffn.register_forward_pre_hook(lambda block, inputs: shared.clear() or parts.clear()),
               router(ffn).register_forward_hook(on_router), module.register_forward_pre_hook(on_experts),
               module.act_fn.register_forward_hook(on_act), ffn.register_forward_hook(on_block)]
    if shared_module(ffn) is not None:
        handles += experts.shared_hooks(ffn, weights, shared, kinds)
    return handles


def edit_hooks(ffn: nn.Module, neurons: torch.Tensor, edit: experts.Edit) -> list:
    """Hooks applying ``edit`` to a of the chosen neurons: expert neurons e·I + j in the experts' activation module
    (on every row of expert e: an unchosen expert's rows have up = 0, so their z stays 0), then the shared
    expert's units."""
    module = experts_module(ffn)
    n_experts, units = expert_shape(module)
    routed = neurons[neurons < n_experts * units]

    def on_act(act, inputs, a):
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)   # (N, E·I)
        edited = edit(flat, routed.to(a.device), routed)
        return edited.reshape(a.shape[1], n_experts, units).transpose(0, 1)

    handles = [module.act_fn.register_forward_hook(on_act)] if len(routed) else []
    return handles + experts.edit_hooks(ffn, neurons[neurons >= n_experts * units], edit)
