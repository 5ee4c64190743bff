"""Mixture-of-experts layers laid out unlike one experts module called with ``top_k_index`` (JetMoe's parallel
experts, ...): their per-token a and z of every expert unit, routing weights over E and output, recomputed
token by token from the layer's input and weights (its router included), written here."""

import torch


def is_jetmoe(block) -> bool:
    return hasattr(block, "input_linear") and hasattr(block, "activation")


def jetmoe_states(block, x):
    """JetMoe: softmax over the top-k router logits; expert e: [gate; up] = input_linear[e] x, a = act(gate),
    z = a · up, output Σ_e w_e · output_linear[e] z + bias."""
    n_experts, double, _ = block.input_linear.weight.shape
    units, k = double // 2, block.router.top_k
    a_all, z_all = torch.zeros(len(x), n_experts, units), torch.zeros(len(x), n_experts, units)
    routing, out = torch.zeros(len(x), n_experts), torch.zeros_like(x)
    for n in range(len(x)):
        logits = block.router.layer.weight @ x[n]
        top = torch.topk(logits, k)
        weights = torch.softmax(top.values, dim=0)
        for w, e in zip(weights, top.indices.tolist()):
            gate, up = (block.input_linear.weight[e] @ x[n]).chunk(2)
            a = block.activation(gate)
            z = a * up
            out[n] += w * (block.output_linear.weight[e] @ z)
            a_all[n, e], z_all[n, e], routing[n, e] = a, z, w
    return a_all.reshape(len(x), -1), z_all.reshape(len(x), -1), routing, out + block.bias


def layout_states(block, x):
    """(a, z, routing, output) per token of a block of one of these layouts, from its input x (tokens, H)."""
    return jetmoe_states(block, x)


def is_layout(block) -> bool:
    return is_jetmoe(block)
