"""Mixture-of-experts layers laid out unlike one experts module with 3-D weights called with ``top_k_index``
(JetMoe's parallel experts, DBRX's GLU of 2-D stacks): their per-token a and z of every expert unit, routing
weights over E and output, recomputed token by token from the layer's input and weights (its router included),
written here; and LongCat-Flash's dense MLPs beside its MoE block."""

import numpy as np
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


def is_dbrx(block) -> bool:
    return hasattr(getattr(block, "experts", None), "mlp") and hasattr(block.experts.mlp, "w1")


def dbrx_states(block, x):
    """DBRX: p = softmax of the router logits, its top k normalised by their p-norm (moe_normalize_expert_weights);
    expert e's slices (I, H) of w1, v1, w2: a = act(w1_e x), z = a · v1_e x, output Σ_e w_e · z w2_e."""
    mlp, n_experts, k = block.experts.mlp, block.experts.num_experts, block.top_k
    units = mlp.w1.shape[0] // n_experts
    w1, v1, w2 = (stack.view(n_experts, units, -1) for stack in (mlp.w1, mlp.v1, mlp.w2))
    a_all, z_all = torch.zeros(len(x), n_experts, units), torch.zeros(len(x), n_experts, units)
    routing, out = torch.zeros(len(x), n_experts), torch.zeros_like(x)
    for n in range(len(x)):
        top = torch.topk(torch.softmax(block.router.layer.weight @ x[n], dim=0), k)
        weights = top.values / top.values.norm(p=block.moe_normalize_expert_weights)
        for w, e in zip(weights, top.indices.tolist()):
            a = mlp.activation_fn(w1[e] @ x[n])
            z = a * (v1[e] @ x[n])
            out[n] += w * (z @ w2[e])
            a_all[n, e], z_all[n, e], routing[n, e] = a, z, w
    return a_all.reshape(len(x), -1), z_all.reshape(len(x), -1), routing, out


def is_stacked(shared) -> bool:
    """Shared experts kept as 3-D weights (Inkling)."""
    return getattr(getattr(shared, "gate_proj", None), "dim", lambda: 2)() == 3


def stacked_states(block, x, index):
    """Inkling's shared experts on tokens x whose routed experts are ``index``: γ_s from the router's logits
    (log-sigmoid, normalised over the routed and shared slots, times route_scale and the global scale), a_s =
    act(gate_s x), z_s = a_s · up_s x · γ_s; (a, z) as (tokens, S·I), with units s·I + j. Checked: the router's
    γ and the shared experts' output Σ_s down_s z_s."""
    router, shared = block.gate, block.shared_experts
    n_shared = shared.down_proj.shape[0]
    logits = x @ router.weight.T
    slots = torch.cat([logits[:, :-n_shared].gather(1, index), logits[:, -n_shared:]], dim=1)
    log_p = torch.nn.functional.logsigmoid(slots)
    gammas = torch.exp(log_p - torch.logsumexp(log_p, 1, keepdim=True))[:, -n_shared:]
    gammas = gammas * router.route_scale * router.global_scale
    torch.testing.assert_close(gammas, router(x)[3], atol=1e-5, rtol=1e-4)
    a = torch.stack([shared.act_fn(x @ shared.gate_proj[s].T) for s in range(n_shared)], 1)   # (tokens, S, I)
    z = torch.stack([a[:, s] * (x @ shared.up_proj[s].T) * gammas[:, s, None] for s in range(n_shared)], 1)
    out = sum(z[:, s] @ shared.down_proj[s].T for s in range(n_shared))
    torch.testing.assert_close(out, shared(x, gammas=gammas), atol=1e-4, rtol=1e-4)
    return a.reshape(len(x), -1), z.reshape(len(x), -1)


def layout_states(block, x):
    """(a, z, routing, output) per token of a block of one of these layouts, from its input x (tokens, H)."""
    return jetmoe_states(block, x) if is_jetmoe(block) else dbrx_states(block, x)


def is_layout(block) -> bool:
    return is_jetmoe(block) or is_dbrx(block)


def with_dense_beside(layers, expected: dict, recomputed_dense) -> dict:
    """``expected`` (layer -> kind -> pooling -> (sentences, width)) with the NAS and NAV of the list of dense
    MLPs that LongCat-Flash's layers run beside the MoE block (``mlps``, each on its own input) after the experts'
    units, in the list's order; ``layers``: the decoder layers; ``recomputed_dense`` (layer -> FFN) gives theirs."""
    lists = {layer: getattr(layers[layer], "mlps", None) for layer in expected}
    for position in range(max((len(mlps) for mlps in lists.values() if mlps is not None), default=0)):
        dense = recomputed_dense({layer: mlps[position] for layer, mlps in lists.items() if mlps is not None})
        for layer, by_kind in dense.items():
            for kind, by in by_kind.items():
                for pooling, value in by.items():
                    expected[layer][kind][pooling] = np.concatenate([expected[layer][kind][pooling], value], 1)
    return expected
