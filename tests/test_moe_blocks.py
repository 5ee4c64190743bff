"""Mixture-of-experts layers of other layouts than one experts module called with ``top_k_index`` and a dense
shared FFN (JetMoe's parallel experts, Inkling's shared experts kept as 3-D weights): deactivating and scaling their expert neurons equals zeroing and scaling the matching
slice of the experts' down projection, and their activation counts are the pooled NAS's."""

import copy

import numpy as np
import pytest
import torch

from helpers import moe_blocks, tiny_tokenizer
from moe_layouts import is_jetmoe
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.probes import layer_widths

COMMON = dict(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=128, bos_token_id=1, pad_token_id=0, eos_token_id=2, head_dim=8)
CONFIGS = {   # model type -> config options: 4 experts of 12 units, top 2
    "jetmoe": dict(intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, kv_channels=8),
    "inkling_text": dict(intermediate_size=20, moe_intermediate_size=12, n_routed_experts=4, n_shared_experts=2,
                         num_experts_per_tok=2),
}
SENTENCES = ["all human beings are born free and equal", "tous les", "alle menschen sind frei", "everyone has"]


@pytest.fixture(scope="module", params=list(CONFIGS))
def moe(request):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(request.param, **COMMON, **CONFIGS[request.param]))
    for parameter in model.parameters():   # random biases and routers, not the initialiser's zeros
        parameter.data.normal_(0, 0.5)
    return request.param, model.eval()


def down_column(block, neuron: int) -> torch.Tensor:
    """The column of the down projection that expert neuron e·I + j feeds, or, past the E·I routed units, shared
    unit s·I + j: (H,), a view into the weights (all stored (E, H, I))."""
    weight = block.output_linear.weight if is_jetmoe(block) else block.experts.down_proj
    expert, unit = divmod(neuron, weight.shape[2])
    if expert >= weight.shape[0]:
        weight, expert = block.shared_experts.down_proj, expert - weight.shape[0]
    return weight.data[expert, :, unit]


def chosen_neurons(model) -> dict[int, list[int]]:
    """Units of three experts per MoE layer (of the two last shared experts where there are: 4·12 routed)."""
    widths = layer_widths(model)
    return {layer: [n for n in (1, 12 + 5, 4 * 12 + 3) if n < widths[layer] - 1] + [widths[layer] - 1]
            for layer in moe_blocks(model)}


def scaled_copy(model, factors: dict[int, dict[int, float]]):
    copied = copy.deepcopy(model)
    blocks = moe_blocks(copied)
    for layer, by_neuron in factors.items():
        for neuron, factor in by_neuron.items():
            down_column(blocks[layer], neuron).mul_(factor)
    return copied


def test_deactivating_expert_neurons_equals_zeroing_down_projection_slices(moe):
    _, model = moe
    chosen, ids = chosen_neurons(model), tiny_tokenizer()(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with deactivated(model, chosen):
            edited = model(**ids).logits
        expected = scaled_copy(model, {layer: dict.fromkeys(n, 0.0) for layer, n in chosen.items()})(**ids).logits
        intact = model(**ids).logits
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(edited, intact, atol=1e-4)


def test_scaling_expert_neurons_equals_scaling_down_projection_slices(moe):
    _, model = moe
    factors = {layer: {n: 0.5 + i + layer for i, n in enumerate(neurons)}
               for layer, neurons in chosen_neurons(model).items()}
    pairs = [(layer, n) for layer, by in factors.items() for n in by]
    ids = tiny_tokenizer()(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        with intervene(model, pairs[::-1], "scale", [factors[layer][n] for layer, n in pairs[::-1]]):
            edited = model(**ids).logits
        expected = scaled_copy(model, factors)(**ids).logits
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=1e-4)


def test_activation_counts_count_routed_active_tokens(moe):
    _, model = moe
    active, total, _ = activation_counts(model, tiny_tokenizer(), SENTENCES, batch_size=2)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=len(SENTENCES), kinds=("nas",))
    widths = layer_widths(model)
    assert active.shape == (len(widths), max(widths)) and total == states.n_tokens.sum()
    for layer, width in enumerate(widths):
        counted = (states["nas"]["mean"][layer] * states.n_tokens[:, None]).sum(0)
        np.testing.assert_allclose(active[layer, :width], counted, atol=1e-3)
