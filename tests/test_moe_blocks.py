"""Mixture-of-experts blocks of unusual shape (their states are checked against the recomputation of
tests/helpers.py by tests/test_architectures.py): Granite-MoE-Shared's shared_mlp beside the block in the layer,
MiniMax-M3's clamped SwiGLU in its shared experts and dense layers (no activation module), Llama 4's experts
called with every token for every expert; their states in models that mix dense and MoE layers, and
deactivating and scaling their expert, shared and dense neurons against zeroed and scaled down-projection
slices."""

import copy

import numpy as np
import pytest
import torch

from helpers import (POOLS, assert_states_are_recomputed, moe_blocks, recomputed_dense, recomputed_experts,
                     shared_down, tiny_tokenizer)
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.probes import decoder_layers, layer_widths
from neuronxa.stage_one.sites import find_sites

HIDDEN = 16
COMMON = dict(vocab_size=128, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=128, bos_token_id=1, pad_token_id=0, head_dim=8,
              intermediate_size=12, num_local_experts=4, num_experts_per_tok=2)
CONFIGS = {   # model type -> config options: 4 experts of 12 units, top 2, and shared experts
    "granitemoeshared": dict(shared_intermediate_size=20),
    "minimax_m3_vl_text": dict(shared_intermediate_size=20, dense_intermediate_size=24,
                               mlp_layer_types=["dense", "sparse"]),   # a dense layer, a clamped SwiGLU too
    "llama4_text": dict(moe_layers=[1], intermediate_size_mlp=20),      # a dense layer, then an MoE one
}
SENTENCES = ["all human beings are born free and equal", "tous les", "alle menschen sind frei", "everyone has"]


def block_model(model_type: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**COMMON, **CONFIGS[model_type]})
    model = AutoModelForCausalLM.from_config(config)
    for parameter in model.parameters():   # random routers, not the initialiser's zeros
        parameter.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def block(request):
    return request.param, block_model(request.param), tiny_tokenizer()


def test_states_of_every_layer_equal_a_recomputation(block):
    """MoE layers (experts, then shared experts) and dense layers, in padded batches."""
    model_type, model, tokenizer = block
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=3)
    expected = recomputed_experts(model, tokenizer, SENTENCES)
    dense = [n for n in range(len(layer_widths(model))) if n not in expected]
    expected.update(recomputed_dense(model, tokenizer, {n: ffn_of(decoder_layers(model)[n]) for n in dense},
                                     SENTENCES))
    assert len(expected) == len(layer_widths(model))
    for layer, by_kind in expected.items():
        for kind, by in by_kind.items():
            for pooling in POOLS:
                np.testing.assert_allclose(states[kind][pooling][layer], by[pooling], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{model_type} {kind} {pooling} {layer}")


def ffn_of(decoder_layer):
    return decoder_layer.mlp if hasattr(decoder_layer, "mlp") else decoder_layer.feed_forward


@pytest.mark.parametrize("implementation", ["eager", "batched_mm"])
@pytest.mark.parametrize("model_type", ["granitemoeshared", "minimax_m3_vl_text"])
def test_every_experts_implementation_gives_the_recomputed_states(model_type, implementation):
    """a and z read where grouped_mm (the default) and batched_mm compute them, or recomputed per expert (eager)."""
    model = block_model(model_type)
    model.set_experts_implementation(implementation)
    assert_states_are_recomputed(model, SENTENCES, f"{model_type} {implementation}")


def shared_of(model, layer: int):
    """The shared experts of a layer's MoE block: inside it, else beside it in the layer (shared_mlp)."""
    ffn, decoder_layer = moe_blocks(model)[layer], decoder_layers(model)[layer]
    return next(getattr(module, name) for module in (ffn, decoder_layer)
                for name in ("shared_expert", "shared_experts", "shared_mlp") if getattr(module, name, None))


def scaled_copy(model, factors: dict):
    """The model with the down projections' slices of the chosen neurons (layer -> neuron -> factor) scaled:
    ``down_proj[e, :, j]`` of expert neuron e·I + j ((e, j, :) where stored transposed), then the shared
    experts' down projection's columns."""
    copied = copy.deepcopy(model)
    blocks = moe_blocks(copied)
    for layer, decoder_layer in enumerate(decoder_layers(copied)):
        if layer not in blocks:   # a dense layer
            for neuron, factor in factors.get(layer, {}).items():
                ffn_of(decoder_layer).down_proj.weight.data[:, neuron] *= factor
            continue
        experts = blocks[layer].experts
        n_experts, transposed = experts.down_proj.shape[0], experts.down_proj.shape[2] == HIDDEN
        units = experts.down_proj.shape[1] if transposed else experts.down_proj.shape[2]
        for neuron, factor in factors.get(layer, {}).items():
            e, j = divmod(neuron, units)
            if e < n_experts:
                (experts.down_proj.data[e, j, :] if transposed else experts.down_proj.data[e, :, j]).mul_(factor)
            else:
                shared_down(shared_of(copied, layer)).weight.data[:, neuron - n_experts * units] *= factor
    return copied


def chosen_neurons(model) -> dict:
    """Units of two experts and of the shared experts in every MoE layer, three units of a dense one."""
    widths, blocks = layer_widths(model), moe_blocks(model)
    return {layer: [1, 12 + 5, 36, width - 1] if layer in blocks else [0, 3, width - 1]
            for layer, width in enumerate(widths)}


def test_deactivating_expert_and_shared_neurons_equals_zeroing_down_projection_slices(block):
    model_type, model, tokenizer = block
    chosen = chosen_neurons(model)
    ids = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with deactivated(model, chosen):
            edited = model(**ids).logits
        expected = scaled_copy(model, {layer: dict.fromkeys(neurons, 0.0) for layer, neurons in chosen.items()})
        intact = model(**ids).logits
        torch.testing.assert_close(edited, expected(**ids).logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(edited, intact, atol=1e-4)


def test_scaling_expert_and_shared_neurons_equals_scaling_down_projection_slices(block):
    model_type, model, tokenizer = block
    factors = {layer: {n: 0.5 + i + layer for i, n in enumerate(neurons)}
               for layer, neurons in chosen_neurons(model).items()}
    pairs = [(layer, n) for layer, by in factors.items() for n in by]
    ids = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with intervene(model, pairs, "scale", [factors[layer][n] for layer, n in pairs]):
            edited = model(**ids).logits
        torch.testing.assert_close(edited, scaled_copy(model, factors)(**ids).logits, atol=1e-4, rtol=1e-4)


def test_granite_shared_mlp_counts_after_the_experts():
    model = block_model("granitemoeshared")
    assert layer_widths(model) == [4 * 12 + 20] * 2


def test_a_dense_ffn_beside_a_block_with_shared_experts_is_refused_in_one_line():
    """Beside a block that has shared experts of its own, a dense FFN in the layer could not be told apart."""
    model = block_model("granitemoeshared")
    for index, layer in enumerate(model.base_model.layers):
        layer.block_sparse_moe.shared_expert = copy.deepcopy(layer.shared_mlp)
    with pytest.raises(NeuronXAError, match=r"^model type 'granitemoeshared' adds a dense FFN \(layers\.0\.shared_mlp\) "
                                            r"beside its mixture-of-experts block that cannot be read as its shared "
                                            r"experts \(.*\): not supported$"):
        find_sites(model)
