"""What a mixture-of-experts block holds, found by structure: its routed experts (one module with 3-D weights,
JetMoe's parallel experts, DBRX's GLU of 2-D stacks), its shared experts (a dense FFN beside them in the block,
or dense FFNs beside the block in the layer), whether the rest is only routers (so that the block can be read),
and its neurons' count (E·I routed units, then the shared experts')."""

from __future__ import annotations

import inspect
from weakref import WeakKeyDictionary

import torch
from torch import nn

from neuronxa.stage_one.stacked_shared import stacked_shared, stacked_width
from neuronxa.stage_one.structure import act_module, projections, submodule, widths
from neuronxa.stage_one.swiglu import swiglu_parameters


def experts_module(ffn: nn.Module) -> nn.Module | None:
    """The routed experts of an FFN block (one module with 3-D ``gate_up_proj``/``down_proj``, or an ungated
    ``up_proj``/``down_proj`` (Nemotron-H)), or None."""
    experts = getattr(ffn, "experts", None)
    weight = getattr(experts, "gate_up_proj", getattr(experts, "up_proj", None))
    return experts if isinstance(weight, torch.Tensor) and weight.dim() == 3 else None


def parallel_experts(block: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """JetMoe's routed experts: the experts' input and output projections as two childless modules of 3-D
    ``weight`` (E, 2I, H) and (E, H, I), called with the routed rows sorted by expert, beside an activation module
    (of the gate half) and a router; else None (JetMoe's attention experts have no activation and no 2I)."""
    stacks = [child for child in block.children() if not list(child.children())
              and isinstance(getattr(child, "weight", None), torch.Tensor) and child.weight.dim() == 3]
    if len(stacks) != 2 or act_module(block) is None:
        return None
    first, second = stacks
    n_experts, double, hidden = first.weight.shape
    return (first, second) if tuple(second.weight.shape) == (n_experts, hidden, double // 2) else None


def glu_experts(block: nn.Module) -> nn.Module | None:
    """DBRX's routed experts: ``experts`` (``num_experts`` of them) holding ``mlp``, a GLU of three 2-D stacks
    ``w1`` (gate), ``v1`` (up) and ``w2`` (down, expert e's rows e·I … e·I + I − 1 map its units to the hidden
    size), each (E·I, H), and an activation ``activation_fn``; else None."""
    experts = getattr(block, "experts", None)
    mlp = getattr(experts, "mlp", None)
    stacks = [getattr(mlp, name, None) for name in ("w1", "v1", "w2")]
    if not all(isinstance(stack, torch.Tensor) and stack.dim() == 2 for stack in stacks) \
            or len({stack.shape for stack in stacks}) > 1:
        return None
    n_experts = getattr(experts, "num_experts", 0)
    glu = n_experts and stacks[0].shape[0] % n_experts == 0 and _one_argument(getattr(mlp, "activation_fn", None))
    return experts if glu else None


def glu_shape(experts: nn.Module) -> tuple[int, int, int]:
    """(E, I, H) of DBRX's experts (``glu_experts``)."""
    rows, hidden = experts.mlp.w1.shape
    return experts.num_experts, rows // experts.num_experts, hidden


def probed(block: nn.Module) -> bool:
    """Whether ``block`` holds routed experts that this module reads: one experts module called with the routed
    tokens (``top_k_index``, ``top_k_weights``) whose activation it recomputes (an activation module of one
    argument, Inkling2's soft-capped SwiGLU, or a clamped SwiGLU: gpt_oss, MiniMax-M3), or called with every token
    for every expert (``scaled``), beside only routers and shared experts it reads (``readable_rest``); or JetMoe's
    pair of parallel experts (``parallel_experts``); or DBRX's GLU of 2-D stacks beside only routers
    (``glu_experts``)."""
    if parallel_experts(block) is not None:
        return True
    if (glu := glu_experts(block)) is not None:
        return all(child is glu or _router_like(child, glu_shape(glu)[2]) for child in block.children())
    found = experts_module(block)
    if found is None:
        return False
    called = list(inspect.signature(type(found).forward).parameters)[1:]   # (tokens, top_k_index, top_k_weights)
    act = getattr(found, "act_fn", None)
    known = (_one_argument(act) or softcapped(found)) if act is not None else swiglu_parameters(found) is not None
    return (len(called) >= 3 or scaled(block)) and known and readable_rest(block)


def scaled(block: nn.Module) -> bool:
    """Whether the block calls its experts with the tokens alone: every token for every expert (E copies, each
    scaled by its routing weight before the experts' activation module), routed by a router Linear (Llama 4)."""
    found = experts_module(block)
    called = list(inspect.signature(type(found).forward).parameters)[1:]
    return len(called) == 1 and isinstance(getattr(found, "act_fn", None), nn.Module) and router(block) is not None


def router(block: nn.Module) -> nn.Module | None:
    """The block's router: its Linear child from the hidden size to one logit per expert, or None."""
    found = experts_module(block)
    shape = (hidden_size(found), expert_shape(found)[0])
    return next((child for child in block.children() if isinstance(child, nn.Linear) and widths(child) == shape),
                None)


def softcapped(experts: nn.Module) -> bool:
    """Whether the experts' activation is Inkling2's soft-capped SwiGLU of (gate, up), with its two soft-caps."""
    return all(hasattr(getattr(experts, "act_fn", None), name) for name in ("gate_softcap", "up_softcap"))


def _one_argument(act) -> bool:
    """Whether ``act`` is an activation (a module or function) of one tensor."""
    if act is None:
        return False
    called = inspect.signature(act.forward if isinstance(act, nn.Module) else act).parameters.values()
    return len([p for p in called if p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD]) == 1


def transposed(experts: nn.Module) -> bool:
    """Whether the experts' weights are stored (E, in, out): ``is_transposed``, else from the shapes (gate_up
    (E, H, 2I) and down (E, I, H), as Llama 4's, against (E, 2I, H) and (E, H, I))."""
    if hasattr(experts, "is_transposed"):
        return experts.is_transposed
    gate_up, down = experts.gate_up_proj.shape, experts.down_proj.shape
    return gate_up[1] == down[2] and gate_up[2] == 2 * down[1]


def hidden_size(experts: nn.Module) -> int:
    """H: the width of the tokens the experts receive (and give back)."""
    down = experts.down_proj
    return down.shape[2] if transposed(experts) else down.shape[1]


# MoE block -> the dense FFNs that its decoder layer runs beside it (Granite-MoE-Shared's shared_mlp on the
# block's input, LongCat-Flash's list of two MLPs), in the order they run, placed by the search for a model's sites
# (``sites.find_sites``)
_BESIDE: WeakKeyDictionary = WeakKeyDictionary()


def own_shared(ffn: nn.Module) -> nn.Module | None:
    """The shared experts inside an MoE block, found by structure: its child besides the routed experts that is
    a dense FFN (a down projection to the hidden size, input projections from it), or None."""
    routed = experts_module(ffn)
    hidden = hidden_size(routed)
    return next((child for child in ffn.children() if child is not routed and projections(child, hidden)), None)


def place_beside(ffn: nn.Module, dense: list[nn.Module]) -> None:
    """Read ``dense``, the dense FFNs that the layer runs beside the MoE block ``ffn`` (after it, in this order),
    as the block's shared experts."""
    _BESIDE[ffn] = dense


def beside(ffn: nn.Module) -> list[nn.Module]:
    """The dense FFNs placed beside the MoE block ``ffn``, in the order they run (none: empty)."""
    return _BESIDE.get(ffn, [])


def shared_modules(ffn: nn.Module) -> list[nn.Module]:
    """The shared experts of an MoE block, in the order their units follow the routed experts': inside it, else
    the dense FFNs placed beside it in its layer (none: empty)."""
    own = own_shared(ffn)
    return [own] if own is not None else beside(ffn)


def shared_module(ffn: nn.Module) -> nn.Module | None:
    """The first of the block's shared experts (``shared_modules``), or None."""
    return next(iter(shared_modules(ffn)), None)


def readable_rest(block: nn.Module) -> bool:
    """Whether every child of an MoE block besides its routed experts is a router or gate (weights of at most two
    dimensions, none writing to the hidden size: nothing the block adds to its output) or its shared experts with
    an activation module of one argument, or its shared experts as stacks of 3-D weights (``stacked_shared``)."""
    routed, shared, stacked = experts_module(block), shared_module(block), stacked_shared(block)
    hidden = hidden_size(routed)
    for child in block.children():
        if child is stacked:
            if not _one_argument(child.act_fn):
                return False
        elif child is shared:
            if not readable_shared(child):
                return False
        elif child is not routed and not _router_like(child, hidden):
            return False
    return True


def _router_like(module: nn.Module, hidden: int) -> bool:
    """Whether ``module`` can only route (weights of at most two dimensions, none writing to the hidden size)."""
    return not any(p.dim() > 2 or p.dim() == 2 and p.shape[0] == hidden for p in module.parameters())


def readable_shared(shared: nn.Module) -> bool:
    """Whether the shared experts' a can be read: they have an activation module of one argument, or compute a
    clamped SwiGLU (``swiglu_ffn``)."""
    return _one_argument(getattr(shared, act_module(shared) or "", None)) or swiglu_ffn(shared)


def swiglu_ffn(ffn: nn.Module) -> bool:
    """Whether a dense FFN (shared experts, or a dense layer) computes a clamped SwiGLU of one fused gate_up
    projection, with no activation module (MiniMax-M3)."""
    linear = [child for child in ffn.children() if widths(child)]
    fused = len(linear) == 2 and widths(linear[0])[1] == 2 * widths(linear[1])[0]
    return act_module(ffn) is None and swiglu_parameters(ffn) is not None and fused


def shared_sites(ffn: nn.Module, shared: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Where one of an MoE block's shared experts' a is read (their activation module's output, or for a clamped
    SwiGLU their fused gate_up projection's output), and their down projection."""
    down, inputs, _ = projections(shared, hidden_size(experts_module(ffn)))
    return submodule(shared, inputs[0] if swiglu_ffn(shared) else act_module(shared)), submodule(shared, down)


def shared_width(ffn: nn.Module, shared: nn.Module) -> int:
    """Units of one of the block's shared experts (its down projection's input width)."""
    return widths(shared_sites(ffn, shared)[1])[0]


def routing_width(experts: nn.Module) -> int:
    """Experts a token can be routed to: E, then LongCat-Flash's zero experts (slots that return the token
    unchanged, with no neurons), for which its ``gate_up_proj`` holds rows and its ``down_proj`` none."""
    stack = getattr(experts, "gate_up_proj", getattr(experts, "up_proj", None))
    return max(stack.shape[0], expert_shape(experts)[0])


def expert_shape(experts: nn.Module) -> tuple[int, int]:
    """(E, I): experts and units per expert (the down projection's input width)."""
    down = experts.down_proj
    return down.shape[0], down.shape[1] if transposed(experts) else down.shape[2]


def moe_width(ffn: nn.Module) -> int:
    """Neurons of an MoE block: E·I routed expert units, then the shared experts' units."""
    if (pair := parallel_experts(ffn)) is not None:
        return pair[1].weight.shape[0] * pair[1].weight.shape[2]
    if (glu := glu_experts(ffn)) is not None:
        n_experts, units, _ = glu_shape(glu)
        return n_experts * units
    n_experts, units = expert_shape(experts_module(ffn))
    if (stacked := stacked_shared(ffn)) is not None:
        return n_experts * units + stacked_width(stacked)
    return n_experts * units + sum(shared_width(ffn, shared) for shared in shared_modules(ffn))
