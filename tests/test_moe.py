"""Mixture-of-experts models: expert neurons (e, j) and routing weights against a recomputation from each
experts module's inputs and weights (which must reproduce the module's real output), deactivation against zeroed
down-projection slices, the store's per-layer widths, and a tiny MoE model end to end through the command line."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import POOLS, composed, recomputed_dense, recomputed_experts, tiny_tokenizer
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.intervention import intervene, mean_activations
from neuronxa.stage_one.experts import pooled_rows
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
MIXED = {"qwen2_moe", "qwen3_moe", "deepseek_v3", "jamba"}   # dense and MoE layers


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


def test_pooled_expert_neurons_and_routing_equal_a_recomputation(moe):
    """MoE layers against the experts' recomputation, the dense layers of mixed models against the dense one."""
    model_type, model, tokenizer = moe
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=len(SENTENCES))
    expected = recomputed_experts(model, tokenizer, SENTENCES)
    assert expected, "no MoE layer"
    widths = layer_widths(model)
    dense = [layer for layer in range(len(widths)) if layer not in expected]
    assert bool(dense) == (model_type in MIXED)
    expected.update(recomputed_dense(model, tokenizer, {layer: ffns(model, model_type)[layer] for layer in dense},
                                     SENTENCES))
    for layer in range(len(widths)):
        assert states["nas"]["mean"][layer].shape == (len(SENTENCES), widths[layer])
        if layer in dense:
            assert states["routing"]["mean"][layer].shape == (len(SENTENCES), 0)
        for kind in expected[layer]:
            for pooling in POOLS:
                np.testing.assert_allclose(states[kind][pooling][layer], expected[layer][kind][pooling],
                                           rtol=1e-4, atol=1e-5, err_msg=f"{model_type} {kind} {pooling} {layer}")


@pytest.mark.parametrize("implementation", ["eager", "batched_mm"])
def test_every_experts_implementation_gives_the_recomputed_states(moe, implementation):
    """a and z read from the rows the model computes (grouped_mm, the default, and batched_mm) or recomputed per
    expert (eager, which computes them expert by expert) are the same states."""
    model_type, model, tokenizer = moe
    model = copy.deepcopy(model)
    model.set_experts_implementation(implementation)
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=2)
    for layer, expected in recomputed_experts(model, tokenizer, SENTENCES).items():
        for kind in ("nas", "nav"):
            np.testing.assert_allclose(states[kind]["weighted"][layer], expected[kind]["weighted"], rtol=1e-4,
                                       atol=1e-5, err_msg=f"{model_type} {implementation} {kind} {layer}")


def test_a_token_routed_twice_to_one_expert_counts_once():
    a = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-2.0, 3.0]])   # rows: (token 0, e1), again (token 0, e1), (1, e0)
    rows = (a, 2 * a, torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]))
    weights = torch.tensor([[[0.25, 0.75]]])   # one pooling, one sentence of two tokens
    pooled = pooled_rows(weights, rows, 2, ("nas", "nav"))
    torch.testing.assert_close(pooled["nas"], torch.tensor([[[0.0, 0.75, 0.25, 0.0]]]))
    torch.testing.assert_close(pooled["nav"], torch.tensor([[[3.0, 4.5, 0.5, 0.5]]]))


def chosen_neurons(model, model_type):
    """A few neurons of each layer: units of two experts and, where there is one, of the shared expert."""
    chosen = {}
    for layer, ffn in enumerate(ffns(model, model_type)):
        width = layer_widths(model)[layer]
        chosen[layer] = [0, 3, width - 1] if not hasattr(ffn, "experts") else [1, 12 + 5, 36, width - 1]
    return chosen


def scaled_copy(model, model_type, factors):
    """The model with the down projection's columns of the chosen neurons (layer -> neuron -> factor) scaled: the
    same as scaling those neurons' a, since z = a · m enters the down projection linearly."""
    copied = copy.deepcopy(model)
    for layer, ffn in enumerate(ffns(copied, model_type)):
        for neuron, factor in factors[layer].items():
            if not hasattr(ffn, "experts"):
                ffn.down_proj.weight.data[:, neuron] *= factor
                continue
            experts = ffn.experts
            transposed = getattr(experts, "is_transposed", False)
            units = experts.down_proj.shape[1] if transposed else experts.down_proj.shape[2]
            e, j = divmod(neuron, units)
            if e < experts.down_proj.shape[0]:
                (experts.down_proj.data[e, j, :] if transposed else experts.down_proj.data[e, :, j]).mul_(factor)
            else:
                shared = getattr(ffn, "shared_expert", None) or getattr(ffn, "shared_experts")
                shared.down_proj.weight.data[:, neuron - units * experts.down_proj.shape[0]] *= factor
    return copied


def zeroed_copy(model, model_type, chosen):
    """The model with the down projection's columns of the chosen neurons zeroed."""
    return scaled_copy(model, model_type, {layer: dict.fromkeys(neurons, 0.0) for layer, neurons in chosen.items()})


def test_scaling_expert_neurons_equals_scaling_down_projection_slices(moe):
    """intervene's scale mode with one factor per neuron, on expert, shared and dense neurons alike."""
    model_type, model, tokenizer = moe
    chosen = chosen_neurons(model, model_type)
    factors = {layer: {n: 0.5 + i + layer for i, n in enumerate(neurons)} for layer, neurons in chosen.items()}
    pairs = [(layer, n) for layer, by in factors.items() for n in by]
    ids = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with intervene(model, pairs[::-1], "scale", [factors[layer][n] for layer, n in pairs[::-1]]):
            edited = model(**ids).logits
        expected = scaled_copy(model, model_type, factors)(**ids).logits
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=1e-4)


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
            "tracking.enabled=false", "score.plots=off"]
    align_task.run(composed(base + ["metric=routing"]), tmp_path / "align")
    scores = pd.read_csv(tmp_path / "align" / "scores.csv")
    assert set(scores.metric) == {"routing", "retrieval.routing.pivot_to_target", "retrieval.routing.target_to_pivot"}
    assert set(scores.layer) == {0, 2}   # layer 1 is dense: no routing
    neurons_task.run(composed(base + ["task=neurons", "task.languages=null", "dataset.max_units=2",
                                      "task.top_rate=0.1"]), tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    assert set(found.layer) & {0, 2} and (found.neuron < [layer_widths(moe_model("qwen3_moe"))[i] for i in found.layer]).all()
    assert pd.read_csv(tmp_path / "neurons" / "deactivation.csv", index_col=0).shape == (2, 2)


def test_mean_activations_refuse_expert_neurons_in_one_line(moe):
    model_type, model, tokenizer = moe
    with pytest.raises(NeuronXAError, match="dense FFN neurons only"):
        mean_activations(model, tokenizer, SENTENCES)
