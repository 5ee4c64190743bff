"""Mixture-of-experts layers: a neuron is (expert, unit), probed from what the experts module receives.

transformers stores a layer's routed experts in one ``*Experts`` module holding ``gate_up_proj`` (E, 2I, H) and
``down_proj`` (E, H, I) (transposed, with biases and gate/up interleaved for gpt_oss); its forward receives the
flat tokens, ``top_k_index`` and ``top_k_weights``. A forward pre-hook on it recomputes, for the routed (token,
expert) pairs only, the expert's activation ``a`` and the down projection's input ``z`` from the expert's weights,
and pools them straight into (poolings, batch, E·I): neuron ``e·I + j`` is unit j of expert e, and is inactive
(NAS 0, NAV 0) on every token not routed to e. The shared experts' units follow (``E·I + j``), probed like a
dense FFN. ``z`` does not include the routing weight: the model multiplies the expert's *output* by it, after the
down projection, so ``z`` is the down projection's input exactly as the model computes it.

Routing (kind ``routing``) is the sentence's pooled routing weights over the E experts: per token, the weights
the model gives its top-k experts (``top_k_weights``), 0 for the others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one.pooling import pool
from neuronxa.stage_one.structure import act_module, projections, submodule, widths

Store = Callable[[str, torch.Tensor], None]   # (kind, pooled (poolings, batch, width)) of one layer


def experts_module(ffn: nn.Module) -> nn.Module | None:
    """The routed experts of an FFN block (one module with 3-D ``gate_up_proj``/``down_proj``), or None."""
    experts = getattr(ffn, "experts", None)
    weight = getattr(experts, "gate_up_proj", None)
    return experts if isinstance(weight, torch.Tensor) and weight.dim() == 3 else None


def probed(block: nn.Module) -> bool:
    """Whether ``block`` holds routed experts that this module reads: one experts module called with the routed
    tokens (``top_k_index``, ``top_k_weights``) whose activation it recomputes (an activation module of one
    argument, or gpt_oss's clamped SwiGLU), beside only routers and shared experts it reads (``readable_rest``)."""
    found = experts_module(block)
    if found is None:
        return False
    called = list(inspect.signature(type(found).forward).parameters)[1:]   # (tokens, top_k_index, top_k_weights)
    act = getattr(found, "act_fn", None)
    known = _one_argument(act) if act is not None else hasattr(found, "limit") and hasattr(found, "alpha")
    return len(called) >= 3 and known and readable_rest(block)


def _one_argument(act) -> bool:
    """Whether ``act`` is an activation (a module or function) of one tensor."""
    if act is None:
        return False
    called = inspect.signature(act.forward if isinstance(act, nn.Module) else act).parameters.values()
    return len([p for p in called if p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD]) == 1


def hidden_size(experts: nn.Module) -> int:
    """H: the width of the tokens the experts receive (and give back)."""
    down = experts.down_proj
    return down.shape[2] if getattr(experts, "is_transposed", False) else down.shape[1]


def shared_module(ffn: nn.Module) -> nn.Module | None:
    """The shared experts of an MoE block, found by structure: its child besides the routed experts that is a
    dense FFN (a down projection to the hidden size, input projections from it), or None."""
    routed = experts_module(ffn)
    hidden = hidden_size(routed)
    return next((child for child in ffn.children() if child is not routed and projections(child, hidden)), None)


def readable_rest(block: nn.Module) -> bool:
    """Whether every child of an MoE block besides its routed experts is a router or gate (weights of at most two
    dimensions, none writing to the hidden size: nothing the block adds to its output) or its shared experts with
    an activation module of one argument."""
    routed, shared = experts_module(block), shared_module(block)
    hidden = hidden_size(routed)
    for child in block.children():
        if child is shared:
            if not _one_argument(getattr(child, act_module(child) or "", None)):
                return False
        elif child is not routed and any(p.dim() > 2 or p.dim() == 2 and p.shape[0] == hidden
                                         for p in child.parameters()):
            return False
    return True


def shared_sites(ffn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The activation module and the down projection of an MoE block's shared experts."""
    shared = shared_module(ffn)
    down = projections(shared, hidden_size(experts_module(ffn)))[0]
    return submodule(shared, act_module(shared)), submodule(shared, down)


def expert_shape(experts: nn.Module) -> tuple[int, int]:
    """(E, I): experts and units per expert (the down projection's input width)."""
    down = experts.down_proj
    return down.shape[0], down.shape[1] if getattr(experts, "is_transposed", False) else down.shape[2]


def moe_width(ffn: nn.Module) -> int:
    """Neurons of an MoE block: E·I routed expert units, then the shared experts' units."""
    n_experts, units = expert_shape(experts_module(ffn))
    shared = shared_module(ffn)
    return n_experts * units + (widths(shared_sites(ffn)[1])[0] if shared is not None else 0)


def gate_up(experts: nn.Module, expert: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) pre-activations of one expert on tokens x (rows)."""
    weight = experts.gate_up_proj[expert]
    out = x @ weight if getattr(experts, "is_transposed", False) else x @ weight.T
    if getattr(experts, "has_bias", False):
        out = out + experts.gate_up_proj_bias[expert]
    if getattr(experts, "is_concatenated", True):
        return out.chunk(2, dim=-1)
    return out[..., ::2], out[..., 1::2]


def activation(experts: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m): the activation and what multiplies it into the down projection's input z = a·m. gpt_oss's clamped
    SwiGLU has no activation module: its a is ``gate · σ(α·gate)`` (gate clamped), and m = up + 1 (clamped)."""
    if hasattr(experts, "act_fn"):
        return experts.act_fn(gate), up
    gate = gate.clamp(max=experts.limit)
    return gate * torch.sigmoid(gate * experts.alpha), up.clamp(-experts.limit, experts.limit) + 1


def routed_pairs(top_k_index: torch.Tensor, n_experts: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per expert hit: (expert, token rows, top-k slot) of its routed pairs (indices ≥ E are padding slots)."""
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    experts, counts = torch.unique_consecutive(flat[order], return_counts=True)
    pairs, start = [], 0
    for expert, count in zip(experts.tolist(), counts.tolist()):
        rows = order[start:start + count]
        start += count
        if expert < n_experts:
            pairs.append((expert, rows // top_k_index.shape[1], rows % top_k_index.shape[1]))
    return pairs


def pooled_experts(experts: nn.Module, weights: torch.Tensor, x: torch.Tensor, top_k_index: torch.Tensor,
                   kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """NAS and NAV of the routed experts pooled by ``weights`` (poolings, batch, tokens) over flat tokens x
    (batch·tokens, H): ``kind -> (poolings, batch, E·I)``, float32, computed for the routed pairs only."""
    n_experts, units = expert_shape(experts)
    poolings, batch, tokens = weights.shape
    flat = weights.reshape(poolings, batch * tokens).to(torch.float32)
    out = {kind: torch.zeros(poolings, batch, n_experts, units, device=x.device) for kind in ("nas", "nav")
           if kind in kinds}
    for expert, token, _ in routed_pairs(top_k_index, n_experts):
        token = torch.unique(token)   # a token routed to one expert in two slots (hash routing) has one a
        a, multiplier = activation(experts, *gate_up(experts, expert, x[token]))
        z = a * multiplier
        sentence, w = torch.div(token, tokens, rounding_mode="floor"), flat[:, token, None]
        for kind, value in (("nas", a > 0), ("nav", z.abs())):
            if kind in kinds:
                out[kind][:, :, expert].index_add_(1, sentence, w * value.to(torch.float32))
    return {kind: pooled.reshape(poolings, batch, n_experts * units) for kind, pooled in out.items()}


def pooled_routing(weights: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                   n_experts: int) -> torch.Tensor:
    """The routing weights per token over all E experts (0 for the unrouted), pooled: (poolings, batch, E)."""
    poolings, batch, tokens = weights.shape
    dense = torch.zeros(top_k_index.shape[0], n_experts + 1, device=top_k_index.device)
    dense.scatter_(1, top_k_index.clamp(max=n_experts), top_k_weights.to(torch.float32))
    per_token = dense[:, :n_experts].reshape(batch, tokens, n_experts)
    return pool(weights, per_token)


def moe_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor], store: Store,
              kinds: tuple[str, ...]) -> list:
    """Hooks that pool one MoE block's NAS, NAV (routed experts, then shared) and routing into ``store``."""
    experts, shared = experts_module(ffn), shared_module(ffn)
    parts: dict[str, list[torch.Tensor]] = {}

    def on_experts(module, args, kwargs):
        x, index, routing = _experts_inputs(args, kwargs)
        w = weights(x.device)
        for kind, pooled in pooled_experts(module, w, x, index, kinds).items():
            parts.setdefault(kind, []).insert(0, pooled)
        if "routing" in kinds:
            store("routing", pooled_routing(w, index, routing, expert_shape(module)[0]))

    def on_shared(kind: str, value: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor) -> None:
        if kind in kinds:
            w = weights(states.device)
            parts.setdefault(kind, []).append(pool(w, value(states).reshape(*w.shape[1:], -1)))

    def on_block(module, inputs, output):
        for kind, pooled in parts.items():
            store(kind, torch.cat(pooled, dim=-1))

    handles = [ffn.register_forward_pre_hook(lambda module, inputs: parts.clear()),   # nothing left from a failed pass
               experts.register_forward_pre_hook(on_experts, with_kwargs=True)]
    if shared is not None:
        act, down = shared_sites(ffn)
        handles.append(act.register_forward_hook(lambda m, i, out: on_shared("nas", lambda s: s > 0, out)))
        handles.append(down.register_forward_pre_hook(lambda m, i: on_shared("nav", torch.abs, i[0])))
    handles.append(ffn.register_forward_hook(on_block))
    return handles


def _experts_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat tokens, top_k_index, top_k_weights) from an experts module's call, however they were passed."""
    values = list(args) + list(kwargs.values())
    return values[0], values[1], values[2]


# (a, units of a to edit (its last axis), the layer's neuron indices of those units) -> a with those units edited
Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _edit_output(ffn: nn.Module, edit: Edit, neurons: torch.Tensor):
    """A forward hook on an experts module adding, for the routed pairs of experts with chosen units, what
    editing those units' a changes in the output: w · down_e(z' − z) (any experts implementation)."""
    experts = experts_module(ffn)

    def hook(module, args, kwargs, output):
        x, index, routing = _experts_inputs(args, kwargs)
        n_experts, units = expert_shape(module)
        output = output.clone()
        for expert, token, slot in routed_pairs(index, n_experts):
            chosen = neurons[(neurons // units) == expert]
            if len(chosen):
                a, multiplier = activation(module, *gate_up(module, expert, x[token]))
                change = (edit(a, (chosen % units).to(a.device), chosen) - a) * multiplier
                down = module.down_proj[expert]
                delta = change @ down if getattr(module, "is_transposed", False) else change @ down.T
                output.index_add_(0, token, (routing[token, slot, None] * delta).to(output.dtype))
        return output

    return experts.register_forward_hook(hook, with_kwargs=True)


def _edit_act(act: nn.Module, edit: Edit, units: torch.Tensor, neurons: torch.Tensor):
    return act.register_forward_hook(lambda module, inputs, output: edit(output, units.to(output.device), neurons))


def edit_hooks(ffn: nn.Module, neurons: torch.Tensor, edit: Edit) -> list:
    """Hooks applying ``edit`` to the activation a of the chosen neurons of one MoE block: expert neurons e·I + j,
    then its shared experts' units."""
    n_experts, units = expert_shape(experts_module(ffn))
    routed, handles = n_experts * units, []
    if (neurons < routed).any():
        handles.append(_edit_output(ffn, edit, neurons[neurons < routed]))
    if (neurons >= routed).any():
        shared = neurons[neurons >= routed]
        handles.append(_edit_act(shared_sites(ffn)[0], edit, shared - routed, shared))
    return handles
