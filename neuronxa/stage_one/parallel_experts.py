"""JetMoe's mixture-of-experts layer: its routed experts are two parallel-experts modules (``input_linear``
(E, 2I, H), ``output_linear`` (E, H, I)), each called once with the routed rows sorted by expert and the count of
rows per expert; the layer applies its activation module to the gate half of all rows at once, between them.

So a and z are read where the model computes them, with no recomputation: a is the activation module's output,
z the output projection's input (a · up), and each row's token and expert come from the router's output
(``index_sorted_experts``, ``batch_index``, ``batch_gates``, ``expert_size``, logits). Neuron ``e·I + j`` is unit
j of expert e, as in experts.py, whose pooling of the routed rows these probes share; z does not include the
routing weight (the layer multiplies the output projection's output by it). Deactivation edits a of the chosen
units on the rows of their expert, as the model computes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one.expert_blocks import parallel_experts
from neuronxa.stage_one.experts import Edit, Store, pooled_routing, pooled_rows
from neuronxa.stage_one.structure import act_module


def _sites(ffn: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, int, int]:
    """(router, activation module, output projection, E, I) of a JetMoe MoE layer."""
    first, second = parallel_experts(ffn)
    act = getattr(ffn, act_module(ffn))
    router = next(child for child in ffn.children() if child not in (first, second, act))
    return router, act, second, second.weight.shape[0], second.weight.shape[2]


def _row_experts(sizes, n_experts: int, device: torch.device) -> torch.Tensor:
    """The expert of each routed row, the rows being sorted by expert with ``sizes[e]`` rows of expert e."""
    return torch.repeat_interleave(torch.arange(n_experts, device=device), torch.as_tensor(sizes, device=device))


def _top_k(order: torch.Tensor, expert: torch.Tensor, gate: torch.Tensor,
           tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_k_index, top_k_weights), (tokens, k), back from the rows sorted by expert: row i is the flat top-k
    slot ``order[i]`` (token ``order[i] // k``)."""
    index, weights = torch.empty_like(order), torch.empty_like(gate)
    index[order], weights[order] = expert, gate
    return index.view(tokens, -1), weights.view(tokens, -1)


def moe_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor], store: Store,
              kinds: tuple[str, ...]) -> list:
    """Hooks that pool one JetMoe MoE layer's NAS and NAV (E·I expert neurons) and routing into ``store``."""
    router, act, output, n_experts, _ = _sites(ffn)
    held: dict[str, torch.Tensor] = {}

    def on_router(module, inputs, routed):
        order, token, gate, sizes = routed[:4]
        held.update(token=token, expert=_row_experts(sizes, n_experts, token.device))
        if "routing" in kinds:
            w = weights(token.device)
            index, routing = _top_k(order, held["expert"], gate, w.shape[1] * w.shape[2])
            store("routing", pooled_routing(w, index, routing, n_experts))

    def on_output(module, inputs):
        rows = (held.pop("a"), inputs[0], held["token"], held["expert"])
        for kind, pooled in pooled_rows(weights(inputs[0].device), rows, n_experts, kinds).items():
            store(kind, pooled)

    return [router.register_forward_hook(on_router),
            act.register_forward_hook(lambda module, inputs, a: held.__setitem__("a", a)),
            output.register_forward_pre_hook(on_output)]


def edit_hooks(ffn: nn.Module, neurons: torch.Tensor, edit: Edit) -> list:
    """Hooks applying ``edit`` to a of the chosen expert neurons e·I + j of one JetMoe MoE layer, on the rows
    routed to their expert."""
    router, act, _, n_experts, units = _sites(ffn)
    held: dict[str, torch.Tensor] = {}

    def on_act(module, inputs, a):
        a = a.clone()
        for expert in torch.unique(neurons // units).tolist():
            chosen = neurons[neurons // units == expert]
            rows = held["expert"] == expert
            a[rows] = edit(a[rows], (chosen % units).to(a.device), chosen)
        return a

    return [router.register_forward_hook(lambda module, inputs, routed: held.__setitem__(
                "expert", _row_experts(routed[3], n_experts, routed[1].device))),
            act.register_forward_hook(on_act)]
