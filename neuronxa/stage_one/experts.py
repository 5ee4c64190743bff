"""Mixture-of-experts layers: a neuron is (expert, unit), probed from what the experts module computes.

transformers stores a layer's routed experts in one ``*Experts`` module holding ``gate_up_proj`` (E, 2I, H) and
``down_proj`` (E, H, I) (transposed, with biases and gate/up interleaved for gpt_oss); its forward receives the
flat tokens, ``top_k_index`` and ``top_k_weights``. Its grouped_mm and batched_mm implementations (the default
is grouped_mm) pass the gate_up rows of all routed (token, expert) pairs through ``_apply_gate`` once: the
probe reads a and z there, as the model computes them. Otherwise (eager) a forward pre-hook recomputes them from
the expert's weights, for the routed pairs only. Either way they are pooled straight into (poolings, batch, E·I)
by one sparse product: neuron ``e·I + j`` is unit j of expert e, inactive (NAS 0, NAV 0) on every token not
routed to e. The shared experts' units follow (``E·I + j``), probed like a dense FFN. ``z`` is the down
projection's input: the model multiplies the expert's *output* by the routing weight, after the down projection.

Routing (kind ``routing``) is the sentence's pooled routing weights over the E experts: per token, the weights
the model gives its top-k experts (``top_k_weights``), 0 for the others; LongCat-Flash's zero experts (routed
slots that return the token unchanged, with no neurons) follow the E experts there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from neuronxa.stage_one import swiglu
from neuronxa.stage_one.expert_blocks import (beside, expert_shape, experts_module, routing_width, shared_modules,
                                              shared_sites, shared_width, softcapped, swiglu_ffn)
from neuronxa.stage_one.pooling import pool
from neuronxa.stage_one.stacked_shared import stacked_edit_hook, stacked_hooks, stacked_shared

Store = Callable[[str, torch.Tensor], None]   # (kind, pooled (poolings, batch, width)) of one layer


def gate_up(experts: nn.Module, expert: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) pre-activations of one expert on tokens x (rows); ungated experts (a 3-D ``up_proj``,
    Nemotron-H): (up x, 1), so that a = act(up x) and z = a."""
    name = "gate_up_proj" if hasattr(experts, "gate_up_proj") else "up_proj"
    weight = getattr(experts, name)[expert]
    out = x @ weight if getattr(experts, "is_transposed", False) else x @ weight.T
    if getattr(experts, "has_bias", False):
        out = out + getattr(experts, f"{name}_bias")[expert]
    return split_gate_up(experts, out) if name == "gate_up_proj" else (out, torch.ones_like(out))


def split_gate_up(experts: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) halves of gate_up rows: concatenated, or interleaved (gpt_oss)."""
    if getattr(experts, "is_concatenated", True):
        return out.chunk(2, dim=-1)
    return out[..., ::2], out[..., 1::2]


def activation(experts: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m): the activation and what multiplies it into the down projection's input z = a·m. The clamped
    SwiGLU of gpt_oss and MiniMax-M3 has no activation module (see ``swiglu``). Inkling2's soft-capped SwiGLU takes
    gate and up together: its a is ``cap_g(gate) · σ(gate)``, m = cap_u(up) (computed in float32, as the model
    does)."""
    if softcapped(experts):
        act, dtype = experts.act_fn, gate.dtype
        gate = gate.float()
        return (act.gate_softcap(gate) * torch.sigmoid(gate)).to(dtype), act.up_softcap(up.float()).to(dtype)
    if hasattr(experts, "act_fn"):
        return swiglu.limited_act(experts, gate, up)
    return swiglu.clamped_swiglu(experts, gate, up)


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


Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]   # routed pairs' a, z (pairs, I), token, expert


def reads_gate(experts: nn.Module) -> bool:
    """Whether the gate_up rows of all routed pairs pass through ``_apply_gate`` in one call (to be read there)."""
    implementation = getattr(getattr(experts, "config", None), "_experts_implementation", None)
    return implementation in ("grouped_mm", "batched_mm") and getattr(experts, "has_gate", False) and hasattr(type(experts), "_apply_gate")


def read_rows(experts: nn.Module, gate_up_rows: torch.Tensor, z: torch.Tensor, top_k_index: torch.Tensor,
              a: torch.Tensor | None = None) -> Rows:
    """The rows the model computed, sorted by expert (grouped_mm: the model's own ``torch.sort``) or in token order
    (batched_mm); z as ``_apply_gate`` returned it, a as its activation module gave it (else from the gate half)."""
    flat = top_k_index.reshape(-1)
    if experts.config._experts_implementation == "grouped_mm":
        expert, order = torch.sort(flat)
    else:
        expert, order = flat, torch.arange(len(flat), device=flat.device)
    if a is None or a.shape != z.shape:
        a, _ = activation(experts, *split_gate_up(experts, gate_up_rows))
    return a, z, order // top_k_index.shape[1], expert


def expert_units(experts: nn.Module, expert: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, m) of one expert on tokens x (rows): its activation and what multiplies it into z = a·m."""
    return activation(experts, *gate_up(experts, expert, x))


def expert_down(experts: nn.Module, expert: int) -> torch.Tensor:
    """One expert's down projection as (I, H): z @ it is the expert's output (before the routing weight)."""
    down = experts.down_proj[expert]
    return down if getattr(experts, "is_transposed", False) else down.T


@dataclass(frozen=True)
class ExpertMath:
    """How an experts module computes: its (E, I), an expert's (a, m) on its rows, an expert's down projection
    (I, H). ``STACKED``: 3-D ``gate_up_proj`` and ``down_proj``; DBRX's GLU of 2-D stacks has its own
    (glu_experts.py)."""

    shape: Callable[[nn.Module], tuple[int, int]]
    units: Callable[[nn.Module, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    down: Callable[[nn.Module, int], torch.Tensor]


STACKED = ExpertMath(expert_shape, expert_units, expert_down)


def recomputed_rows(experts: nn.Module, x: torch.Tensor, top_k_index: torch.Tensor,
                    math: ExpertMath = STACKED) -> Rows:
    """a and z of the routed pairs recomputed from each expert's weights (any experts implementation)."""
    n_experts, units = math.shape(experts)
    none = top_k_index.new_zeros(0)
    parts = [(x.new_zeros(0, units), x.new_zeros(0, units), none, none)]   # no pair routed: no rows
    for expert, token, _ in routed_pairs(top_k_index, n_experts):
        a, multiplier = math.units(experts, expert, x[token])
        parts.append((a, a * multiplier, token, torch.full_like(token, expert)))
    return tuple(torch.cat(part) for part in zip(*parts))


def first_of_each(key: torch.Tensor) -> torch.Tensor:
    """True at the first occurrence of each value (a token routed to one expert in two slots has one a)."""
    order = torch.argsort(key, stable=True)
    repeated = torch.zeros_like(key, dtype=torch.bool)
    repeated[order[1:]] = key[order[1:]] == key[order[:-1]]
    return ~repeated


def pooled_rows(weights: torch.Tensor, rows: Rows, n_experts: int, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """NAS and NAV of the routed pairs' rows pooled by ``weights`` (poolings, batch, tokens) into
    ``kind -> (poolings, batch, E·I)``, float32: one sparse product (a weight per pooling and pair, placed at the
    pair's sentence and expert) with all the rows, padding slots and repeated pairs left out."""
    a, z, token, expert = rows
    poolings, batch, tokens = weights.shape
    kept = torch.nonzero((expert < n_experts) & first_of_each(token * (n_experts + 1) + expert)).squeeze(1)
    target = torch.div(token[kept], tokens, rounding_mode="floor") * n_experts + expert[kept]
    place = torch.arange(poolings, device=a.device)[:, None] * (batch * n_experts) + target
    spread = torch.sparse_coo_tensor(torch.stack([place.reshape(-1), kept.repeat(poolings)]),
                                     weights.reshape(poolings, -1)[:, token[kept]].reshape(-1).to(torch.float32),
                                     (poolings * batch * n_experts, len(token)), check_invariants=False)
    values = {"nas": lambda: a > 0, "nav": lambda: z.abs()}
    return {kind: (spread @ values[kind]().to(torch.float32)).reshape(poolings, batch, -1)
            for kind in ("nas", "nav") if kind in kinds}


def pooled_routing(weights: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                   n_experts: int) -> torch.Tensor:
    """The routing weights per token over ``n_experts`` slots (0 for the unrouted), pooled: (poolings, batch, n)."""
    poolings, batch, tokens = weights.shape
    dense = torch.zeros(top_k_index.shape[0], n_experts + 1, device=top_k_index.device)
    dense.scatter_(1, top_k_index.clamp(max=n_experts), top_k_weights.to(torch.float32))
    per_token = dense[:, :n_experts].reshape(batch, tokens, n_experts)
    return pool(weights, per_token)


def moe_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor], store: Store,
              kinds: tuple[str, ...]) -> list:
    """Hooks that pool one MoE block's NAS, NAV (routed experts, then shared) and routing into ``store``; a and z
    are read in ``_apply_gate`` where all routed rows pass through it, else recomputed for the routed pairs."""
    experts = experts_module(ffn)
    routed: dict[str, torch.Tensor] = {}            # kind -> the routed experts' pooled states
    parts: dict[str, list[torch.Tensor]] = {}       # kind -> the shared experts' pooled states
    held, n_experts = {}, expert_shape(experts)[0]   # held: what the experts module received, its activation
    slots = routing_width(experts)                   # routing: over the E experts and any zero experts

    def on_experts(module, args, kwargs):
        x, index, routing = experts_inputs(args, kwargs)
        held.update(weights=weights(x.device), index=index)
        if not reads_gate(module):
            routed.update(pooled_rows(held["weights"], recomputed_rows(module, x, index), n_experts, kinds))
        if "routing" in kinds:
            store("routing", pooled_routing(held["weights"], index, routing, slots))

    def on_gate(gate_up_rows: torch.Tensor) -> torch.Tensor:
        held.pop("a", None)
        z = type(experts)._apply_gate(experts, gate_up_rows)
        if reads_gate(experts):
            rows = read_rows(experts, gate_up_rows, z, held["index"], held.pop("a", None))
            routed.update(pooled_rows(held["weights"], rows, n_experts, kinds))
        return z

    def on_block(module, inputs, output):
        for kind, pooled in routed.items():
            store(kind, torch.cat([pooled, *parts.get(kind, [])], dim=-1))

    handles = [ffn.register_forward_pre_hook(lambda module, inputs: parts.clear() or routed.clear()),  # none left
               experts.register_forward_pre_hook(on_experts, with_kwargs=True)]
    if hasattr(type(experts), "_apply_gate"):
        experts.__dict__["_apply_gate"] = on_gate   # over the class's, while the probe is attached
        handles.append(SimpleNamespace(remove=lambda: experts.__dict__.pop("_apply_gate", None)))
        if isinstance(getattr(experts, "act_fn", None), nn.Module) and not softcapped(experts):   # a as computed
            handles.append(experts.act_fn.register_forward_hook(lambda m, i, out: held.__setitem__("a", out)))
    handles += shared_hooks(ffn, weights, parts, kinds)
    handles.append((beside(ffn) or [ffn])[-1].register_forward_hook(on_block))   # once the shared experts ran too
    return handles


def shared_hooks(ffn: nn.Module, weights: Callable[[torch.device], torch.Tensor],
                 parts: dict[str, list[torch.Tensor]], kinds: tuple[str, ...]) -> list:
    """Hooks appending the shared experts' pooled NAS and NAV to ``parts`` (after the routed experts'): dense
    FFNs' (in the order they run), or those of stacks of 3-D weights (stacked_shared.py); none without shared
    experts."""
    if not shared_modules(ffn):
        stacked = stacked_shared(ffn)
        return [] if stacked is None else stacked_hooks(stacked, weights, parts, kinds)

    def on_shared(kind: str, value: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor) -> None:
        if kind in kinds:
            w = weights(states.device)
            parts.setdefault(kind, []).append(pool(w, value(states).reshape(*w.shape[1:], -1)))

    def on_act(shared: nn.Module):
        a_of = (lambda out: swiglu.fused_a(shared, out)) if swiglu_ffn(shared) else (lambda out: out)
        return lambda module, inputs, out: on_shared("nas", lambda states: a_of(states) > 0, out)

    handles = []
    for shared in shared_modules(ffn):
        act, down = shared_sites(ffn, shared)
        handles += [act.register_forward_hook(on_act(shared)),
                    down.register_forward_pre_hook(lambda m, i: on_shared("nav", torch.abs, i[0]))]
    return handles


def experts_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, top_k_index, top_k_weights) from an experts module's call, however they were passed; the tokens
    flat (tokens, H), or (batch, tokens, H) where the module flattens them itself (DBRX)."""
    values = list(args) + list(kwargs.values())
    return values[0], values[1], values[2]


# (a, units of a to edit (its last axis), the layer's neuron indices of those units) -> a with those units edited
Edit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def edit_output(experts: nn.Module, edit: Edit, neurons: torch.Tensor, math: ExpertMath = STACKED):
    """A forward hook on an experts module adding, for the routed pairs of experts with chosen units, what
    editing those units' a changes in the output: w · down_e(z' − z) (any experts implementation; the tokens and
    the output flat or (batch, tokens, H))."""

    def hook(module, args, kwargs, output):
        x, index, routing = experts_inputs(args, kwargs)
        x, n_experts, units = x.reshape(-1, x.shape[-1]), *math.shape(module)
        edited = output.reshape(x.shape).clone()
        for expert, token, slot in routed_pairs(index, n_experts):
            chosen = neurons[(neurons // units) == expert]
            if len(chosen):
                a, multiplier = math.units(module, expert, x[token])
                change = (edit(a, (chosen % units).to(a.device), chosen) - a) * multiplier
                delta = change @ math.down(module, expert)
                edited.index_add_(0, token, (routing[token, slot, None] * delta).to(edited.dtype))
        return edited.reshape(output.shape)

    return experts.register_forward_hook(hook, with_kwargs=True)


def _edit_act(act: nn.Module, edit: Edit, units: torch.Tensor, neurons: torch.Tensor):
    return act.register_forward_hook(lambda module, inputs, output: edit(output, units.to(output.device), neurons))


def edit_hooks(ffn: nn.Module, neurons: torch.Tensor, edit: Edit) -> list:
    """Hooks applying ``edit`` to the activation a of the chosen neurons of one MoE block: expert neurons e·I + j,
    then its shared experts' units."""
    n_experts, units = expert_shape(experts_module(ffn))
    routed, handles = n_experts * units, []
    if (neurons < routed).any():
        handles.append(edit_output(experts_module(ffn), edit, neurons[neurons < routed]))
    shared, stacked = neurons[neurons >= routed], stacked_shared(ffn)
    if len(shared) and stacked is not None:
        handles.append(stacked_edit_hook(stacked, edit, shared - routed, shared))
    for module in shared_modules(ffn) if len(shared) else []:   # their units one after another
        width = shared_width(ffn, module)
        chosen = shared[(shared >= routed) & (shared < routed + width)]
        own, routed = chosen - routed, routed + width   # this shared FFN's own units
        if len(chosen) and swiglu_ffn(module):
            handles += swiglu.on_a(module, *shared_sites(ffn, module),
                                   lambda a, own=own, chosen=chosen: edit(a, own.to(a.device), chosen))
        elif len(chosen):
            handles.append(_edit_act(shared_sites(ffn, module)[0], edit, own, chosen))
    return handles
