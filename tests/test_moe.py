"""Mixture-of-experts models: expert neurons (e, j) and routing weights against a recomputation from each
experts module's inputs and weights (which must reproduce the module's real output), deactivation against zeroed
down-projection slices, the store's per-layer widths, and a tiny MoE model end to end through the command line."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import composed, tiny_tokenizer
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.probes import layer_widths, submodule
from neuronxa.stage_one.store import StateStore

COMMON = dict(vocab_size=128, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=128, bos_token_id=1, pad_token_id=0, head_dim=8)
ROUTED = dict(intermediate_size=12, num_local_experts=4, num_experts_per_tok=2)
CONFIGS = {   # model type -> (config options, FFN attribute): 4 experts, top 2, dense layers where the type has them
    "mixtral": (ROUTED, "mlp"),
    "qwen2_moe": (dict(intermediate_size=20, moe_intermediate_size=12, shared_expert_intermediate_size=20,
                       num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0]), "mlp"),
    "qwen3_moe": (dict(intermediate_size=20, moe_intermediate_size=12, num_experts=4, num_experts_per_tok=2,
                       mlp_only_layers=[1]), "mlp"),
    "olmoe": (dict(intermediate_size=12, num_experts=4, num_experts_per_tok=2), "mlp"),
    "deepseek_v3": (dict(intermediate_size=20, moe_intermediate_size=12, n_routed_experts=4, num_experts_per_tok=2,
                         n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=8,
                         q_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                         num_key_value_heads=2), "mlp"),
    "gpt_oss": (dict(ROUTED, sliding_window=4), "mlp"),
    "granitemoe": (ROUTED, "block_sparse_moe"),
    "jamba": (dict(intermediate_size=12, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                   expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=0, mamba_d_state=4, mamba_d_conv=2,
                   mamba_expand=1, mamba_dt_rank=4), "feed_forward"),
}
SENTENCES = ["all human beings are born free and equal", "tous les", "alle menschen sind frei", "everyone has"]
POOLS = ("weighted", "mean", "last")


def moe_model(model_type: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    options, _ = CONFIGS[model_type]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**COMMON, **options}))
    for parameter in model.parameters():   # random biases and routers, not the initialiser's zeros
        parameter.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def moe(request):
    return request.param, moe_model(request.param), tiny_tokenizer()


def ffns(model, model_type):
    return [submodule(layer, CONFIGS[model_type][1]) for layer in model.base_model.layers]


def expert_states(experts, x, index, weights):
    """Per token: a and z of every expert unit (0 where not routed), routing weights over E, and the module's
    output recomputed as the sum over routed experts of weight · down(z) — written from the weights here."""
    n_experts = experts.down_proj.shape[0]
    transposed = experts.gate_up_proj.shape[1] == x.shape[1] and experts.gate_up_proj.shape[2] != x.shape[1]
    units = experts.down_proj.shape[1] if transposed else experts.down_proj.shape[2]
    a_all, z_all = torch.zeros(len(x), n_experts, units), torch.zeros(len(x), n_experts, units)
    routing, out = torch.zeros(len(x), n_experts), torch.zeros_like(x)
    for n in range(len(x)):
        for slot in range(index.shape[1]):
            e = int(index[n, slot])
            h = x[n] @ experts.gate_up_proj[e] if transposed else experts.gate_up_proj[e] @ x[n]
            if hasattr(experts, "gate_up_proj_bias"):
                h = h + experts.gate_up_proj_bias[e]
            if hasattr(experts, "act_fn"):   # [gate; up], an activation module
                gate, up = h[:units], h[units:]
                a = experts.act_fn(gate)
                z = a * up
            else:                            # gpt_oss: gate and up interleaved, clamped SwiGLU
                gate, up = h[0::2].clamp(max=experts.limit), h[1::2].clamp(-experts.limit, experts.limit)
                a = gate * torch.sigmoid(experts.alpha * gate)
                z = (up + 1) * a
            down = z @ experts.down_proj[e] if transposed else experts.down_proj[e] @ z
            if hasattr(experts, "down_proj_bias"):
                down = down + experts.down_proj_bias[e]
            out[n] += weights[n, slot] * down
            a_all[n, e], z_all[n, e], routing[n, e] = a, z, weights[n, slot]
    return a_all.reshape(len(x), -1), z_all.reshape(len(x), -1), routing, out


def shared_states(mlp, x):
    a = mlp.act_fn(mlp.gate_proj(x)) if hasattr(mlp, "act_fn") else mlp.activation_fn(mlp.gate_proj(x))
    return a, a * mlp.up_proj(x)


def pool_by_hand(states, mask):
    """(batch, tokens, width) per-token states pooled over the real tokens, one sentence at a time."""
    out = {pooling: np.zeros((states.shape[0], states.shape[2])) for pooling in POOLS}
    for b in range(states.shape[0]):
        real = states[b, : int(mask[b].sum())].double().numpy()
        t = np.arange(1, len(real) + 1)
        out["weighted"][b] = (t[:, None] * real).sum(0) / t.sum()
        out["mean"][b] = real.mean(0)
        out["last"][b] = real[-1]
    return out


def recomputed(model, model_type, tokenizer):
    """Pooled NAS, NAV and routing of every MoE layer, from the inputs each experts module received."""
    ids = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    seen, handles = {}, []
    for layer, ffn in enumerate(ffns(model, model_type)):
        if hasattr(ffn, "experts"):
            handles.append(ffn.experts.register_forward_hook(
                lambda m, args, kwargs, out, layer=layer: seen.__setitem__(
                    layer, (*(list(args) + list(kwargs.values()))[:3], out)), with_kwargs=True))
    with torch.no_grad():
        model.base_model(**ids, use_cache=False)
        for handle in handles:
            handle.remove()
        expected = {}
        for layer, (x, index, weights, output) in seen.items():
            ffn = ffns(model, model_type)[layer]
            a, z, routing, out = expert_states(ffn.experts, x, index, weights)
            torch.testing.assert_close(out, output, atol=1e-5, rtol=1e-4)   # the recomputation is the module's
            shared = getattr(ffn, "shared_expert", None) or getattr(ffn, "shared_experts", None)
            if shared is not None:
                a_shared, z_shared = shared_states(shared, x)
                a, z = torch.cat([a, a_shared], 1), torch.cat([z, z_shared], 1)
            per_token = {"nas": (a > 0).float(), "nav": z.abs(), "routing": routing}
            shape = (*ids["input_ids"].shape, -1)
            expected[layer] = {kind: pool_by_hand(v.reshape(shape), ids["attention_mask"])
                               for kind, v in per_token.items()}
    return expected


def test_pooled_expert_neurons_and_routing_equal_a_recomputation(moe):
    model_type, model, tokenizer = moe
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=len(SENTENCES))
    expected = recomputed(model, model_type, tokenizer)
    assert expected, "no MoE layer"
    widths = layer_widths(model)
    for layer in range(len(widths)):
        assert states["nas"]["mean"][layer].shape == (len(SENTENCES), widths[layer])
        if layer not in expected:
            assert states["routing"]["mean"][layer].shape == (len(SENTENCES), 0)
            continue
        for kind in ("nas", "nav", "routing"):
            for pooling in POOLS:
                np.testing.assert_allclose(states[kind][pooling][layer], expected[layer][kind][pooling],
                                           rtol=1e-4, atol=1e-5, err_msg=f"{model_type} {kind} {pooling} {layer}")


def chosen_neurons(model, model_type):
    """A few neurons of each layer: units of two experts and, where there is one, of the shared expert."""
    chosen = {}
    for layer, ffn in enumerate(ffns(model, model_type)):
        width = layer_widths(model)[layer]
        chosen[layer] = [0, 3, width - 1] if not hasattr(ffn, "experts") else [1, 12 + 5, 36, width - 1]
    return chosen


def zeroed_copy(model, model_type, chosen):
    """The model with the down projection's columns of the chosen neurons zeroed."""
    copied = copy.deepcopy(model)
    for layer, ffn in enumerate(ffns(copied, model_type)):
        for neuron in chosen[layer]:
            if not hasattr(ffn, "experts"):
                ffn.down_proj.weight.data[:, neuron] = 0
                continue
            experts = ffn.experts
            transposed = getattr(experts, "is_transposed", False)
            units = experts.down_proj.shape[1] if transposed else experts.down_proj.shape[2]
            e, j = divmod(neuron, units)
            if e < experts.down_proj.shape[0]:
                (experts.down_proj.data[e, j, :] if transposed else experts.down_proj.data[e, :, j]).zero_()
            else:
                shared = getattr(ffn, "shared_expert", None) or getattr(ffn, "shared_experts")
                shared.down_proj.weight.data[:, neuron - units * experts.down_proj.shape[0]] = 0
    return copied


def test_deactivating_expert_neurons_equals_zeroing_down_projection_slices(moe):
    model_type, model, tokenizer = moe
    chosen = chosen_neurons(model, model_type)
    ids = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with deactivated(model, chosen):
            edited = model(**ids).logits
        expected = zeroed_copy(model, model_type, chosen)(**ids).logits
        intact = model(**ids).logits
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(edited, intact, atol=1e-4)


def test_activation_counts_count_routed_active_tokens(moe):
    model_type, model, tokenizer = moe
    active, total, _ = activation_counts(model, tokenizer, SENTENCES, batch_size=2)
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=len(SENTENCES), kinds=("nas",))
    n_tokens = states.n_tokens
    widths = layer_widths(model)
    assert active.shape == (len(widths), max(widths)) and total == n_tokens.sum()
    for layer, width in enumerate(widths):
        counted = (states["nas"]["mean"][layer] * n_tokens[:, None]).sum(0)
        np.testing.assert_allclose(active[layer, :width], counted, atol=1e-3)
        assert (active[layer, width:] == 0).all()


def test_the_store_keeps_each_layers_width(tmp_path):
    model = moe_model("qwen3_moe")
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=2)
    store = StateStore(tmp_path, {"model": "m", "corpus": "c"})
    store.write("eng", {kind: dict(by) for kind, by in states.items()}, ["1", "2", "3", "4"], "f",
                n_tokens=states.n_tokens, n_truncated=0)
    for kind in ("nas", "routing"):
        assert store.widths("eng", kind) == [a.shape[1] for a in states[kind]["mean"]]
        for layer, expected in enumerate(states[kind]["mean"]):
            np.testing.assert_allclose(store.read("eng", kind, "mean", layer), expected, rtol=2 ** -9, atol=1e-6)
    assert store.widths("eng", "hidden") is None
    store.write("dense", {"nas": {"mean": np.ones((3, 4, 5))}}, ["1", "2", "3", "4"], "f", n_tokens=[1] * 4,
                n_truncated=0)
    with pytest.raises(NeuronXAError, match="holds no routing/mean: routing exists for mixture-of-experts models"):
        store.read("dense", "routing", "mean", 0)


def test_a_tiny_moe_model_end_to_end_through_the_command_line(tmp_path):
    from neuronxa.tasks import align as align_task
    from neuronxa.tasks import neurons as neurons_task

    folder = tmp_path / "tiny-qwen3-moe"
    moe_model("qwen3_moe").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "udhr.tsv"   # words the tiny tokenizer knows
    corpus.write_text("id\teng_Latn\tfra_Latn\n" + "".join(
        f"s{i}\t{eng}\t{fra}\n" for i, (eng, fra) in enumerate(zip(
            ["all human beings are born free", "everyone has the right to life", "equal in dignity and rights",
             "everyone has the right to liberty"],
            ["tous les êtres humains naissent libres", "toute personne a droit à la vie", "égaux en dignité et droits",
             "toute personne a droit à la liberty"]))))
    base = ["model=hf", f"model.name_or_path={folder}", "dataset=tsv", f"dataset.path={corpus}",
            "model.device=cpu", "model.dtype=float32", f"paths.outputs={tmp_path / 'outputs'}", "benchmark=none",
            "tracking.enabled=false", "score.plots=false"]
    align_task.run(composed(base + ["metric=routing"]), tmp_path / "align")
    scores = pd.read_csv(tmp_path / "align" / "scores.csv")
    assert set(scores.metric) == {"routing", "retrieval.routing.pivot_to_target", "retrieval.routing.target_to_pivot"}
    assert set(scores.layer) == {0, 2}   # layer 1 is dense: no routing
    neurons_task.run(composed(base + ["task=neurons", "task.languages=null", "dataset.max_units=2",
                                      "task.top_rate=0.1"]), tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    assert set(found.layer) & {0, 2} and (found.neuron < [layer_widths(moe_model("qwen3_moe"))[i] for i in found.layer]).all()
    assert pd.read_csv(tmp_path / "neurons" / "deactivation.csv", index_col=0).shape == (2, 2)
