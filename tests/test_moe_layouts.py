"""Mixture-of-experts layers of other layouts than one experts module called with ``top_k_index`` and a dense
shared FFN (JetMoe's parallel experts, DBRX's GLU of 2-D stacks, LongCat-Flash's zero experts and two dense MLPs
beside the block, Inkling's shared experts kept as 3-D weights, Inkling2's soft-capped SwiGLU of gate and up,
Nemotron-H's ungated experts in a hybrid whose layers are each one mixer): deactivating
and scaling their expert neurons equals zeroing and scaling the matching slice of the experts' down projection,
and their activation counts are the pooled NAS's; a hybrid's layers without an FFN have no neurons, through stage
one, stage two and the neurons task."""

import copy

import numpy as np
import pytest
import torch

from helpers import assert_states_are_recomputed, moe_blocks, tiny_tokenizer
from moe_layouts import is_dbrx, is_jetmoe
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.probes import decoder_layers, layer_widths

COMMON = dict(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=128, bos_token_id=1, pad_token_id=0, eos_token_id=2, head_dim=8)
CONFIGS = {   # model type -> config options: 4 experts of 12 units, top 2
    "jetmoe": dict(intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, kv_channels=8),
    "dbrx": dict(d_model=16, n_heads=2, n_layers=2, max_seq_len=128,
                 attn_config=dict(kv_n_heads=1, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=12, moe_num_experts=4, moe_top_k=2)),
    "longcat_flash": dict(num_hidden_layers=4, intermediate_size=20, moe_intermediate_size=12, n_routed_experts=4,
                          zero_expert_num=2, num_experts_per_tok=2, kv_lora_rank=8, q_lora_rank=8,
                          qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4, num_key_value_heads=2),
    "inkling_text": dict(intermediate_size=20, moe_intermediate_size=12, n_routed_experts=4, n_shared_experts=2,
                         num_experts_per_tok=2),
    "inkling2_text": dict(intermediate_size=20, moe_intermediate_size=12, n_routed_experts=4, num_local_experts=4,
                          num_experts_per_tok=2),
    "nemotron_h": dict(layers_block_type=["linear_attention", "moe", "full_attention", "mlp"], intermediate_size=20,
                       moe_intermediate_size=12, moe_shared_expert_intermediate_size=20, n_routed_experts=4,
                       num_experts_per_tok=2, n_group=1, topk_group=1, mamba_num_heads=4, mamba_head_dim=8,
                       ssm_state_size=8, n_groups=1, time_step_limit=(0.0, 1e9)),   # (0, inf) fails save_pretrained
}
SENTENCES = ["all human beings are born free and equal", "tous les", "alle menschen sind frei", "everyone has"]


def build(kind: str):
    """The tiny model of ``kind`` with random biases and routers (not the initialiser's zeros), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **{**COMMON, **CONFIGS[kind]}))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def moe(request):
    return request.param, build(request.param)


def down_column(block, neuron: int, layer) -> torch.Tensor:
    """The column of the down projection that expert neuron e·I + j feeds, or, past the E·I routed units, shared
    unit s·I + j, or unit j of the dense MLPs beside the block in its ``layer`` (LongCat-Flash's ``mlps``, one
    after another): (H,), a view into the weights (all stored (E, H, I), but DBRX's w2: (E·I, H), row e·I + j)."""
    if is_dbrx(block):
        return block.experts.mlp.w2.data[neuron]
    weight = block.output_linear.weight if is_jetmoe(block) else block.experts.down_proj
    expert, unit = divmod(neuron, weight.shape[2])
    if expert < weight.shape[0]:
        return weight.data[expert, :, unit]
    if hasattr(layer, "mlps"):
        unit = neuron - weight.shape[0] * weight.shape[2]
        width = layer.mlps[0].down_proj.in_features
        return layer.mlps[unit // width].down_proj.weight.data[:, unit % width]
    shared = block.shared_experts.down_proj
    if isinstance(shared, torch.nn.Linear):   # a dense shared FFN (nemotron_h)
        return shared.weight.data[:, neuron - weight.shape[0] * weight.shape[2]]
    return shared.data[expert - weight.shape[0], :, unit]


def chosen_neurons(model) -> dict[int, list[int]]:
    """Units of three experts per MoE layer (of the two last shared experts where there are: 4·12 routed)."""
    widths = layer_widths(model)
    return {layer: [n for n in (1, 12 + 5, 4 * 12 + 3) if n < widths[layer] - 1] + [widths[layer] - 1]
            for layer in moe_blocks(model)}


def scaled_copy(model, factors: dict[int, dict[int, float]]):
    copied = copy.deepcopy(model)
    blocks, layers = moe_blocks(copied), decoder_layers(copied)
    for layer, by_neuron in factors.items():
        for neuron, factor in by_neuron.items():
            down_column(blocks[layer], neuron, layers[layer]).mul_(factor)
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


@pytest.mark.parametrize("implementation", ["eager", "batched_mm"])
def test_every_experts_implementation_gives_the_recomputed_states(moe, implementation):
    """Besides the default grouped_mm (which the architectures test checks): a and z read in ``_apply_gate``
    (batched_mm, where the experts are gated) or recomputed for the routed pairs (eager)."""
    model_type, model = moe
    if model_type in ("jetmoe", "dbrx"):
        pytest.skip(f"{model_type}'s experts have no implementations to choose from")
    model = copy.deepcopy(model)
    model.set_experts_implementation(implementation)
    assert_states_are_recomputed(model, SENTENCES, f"{model_type} {implementation}")


def test_activation_counts_count_routed_active_tokens(moe):
    _, model = moe
    active, total, _ = activation_counts(model, tiny_tokenizer(), SENTENCES, batch_size=2)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=len(SENTENCES), kinds=("nas",))
    widths = layer_widths(model)
    assert active.shape == (len(widths), max(widths)) and total == states.n_tokens.sum()
    for layer, width in enumerate(widths):
        counted = (states["nas"]["mean"][layer] * states.n_tokens[:, None]).sum(0)
        np.testing.assert_allclose(active[layer, :width], counted, atol=1e-3)


def test_a_hybrids_layers_without_an_ffn_have_no_neurons():
    """Nemotron-H: each layer is one mixer (Mamba-2, MoE, attention, MLP); the layers without an FFN keep their
    index, with width 0 (no NAS, NAV or routing) and their hidden states, and their neurons cannot be chosen."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from neuronxa.errors import NeuronXAError

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("nemotron_h", **COMMON, **CONFIGS["nemotron_h"]))
    assert layer_widths(model) == [0, 4 * 12 + 20, 0, 20]
    states = pooled_states(model.eval(), tiny_tokenizer(), SENTENCES[:2], kinds=("nas", "nav", "hidden", "routing"))
    for kind, widths in {"nas": [0, 68, 0, 20], "routing": [0, 4, 0, 0], "hidden": [16] * 4}.items():
        assert [layer.shape for layer in states[kind]["mean"]] == [(2, width) for width in widths]
    with pytest.raises(NeuronXAError, match=r"^decoder layer 2 has no FFN, so no neurons"):
        with deactivated(model, {1: [0], 2: [0]}):
            pass
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())   # none left


def test_a_hybrid_end_to_end_scores_and_finds_neurons_in_its_ffn_layers_only(tmp_path):
    """Nemotron-H through the align and neurons tasks: NAS is scored on its MoE and MLP layers (1, 3), not on the
    Mamba-2 and attention layers, whose hidden states are scored; its language neurons lie in layers 1 and 3."""
    import pandas as pd
    from transformers import AutoConfig, AutoModelForCausalLM

    from helpers import composed
    from neuronxa.tasks import align as align_task
    from neuronxa.tasks import neurons as neurons_task

    torch.manual_seed(0)
    folder, corpus = tmp_path / "tiny-nemotron-h", tmp_path / "udhr.tsv"
    AutoModelForCausalLM.from_config(AutoConfig.for_model("nemotron_h", **COMMON, **CONFIGS["nemotron_h"])) \
        .save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    rows = zip(["all human beings are born free", "everyone has the right to life", "equal in dignity and rights"],
               ["tous les êtres humains naissent libres", "toute personne a droit à la vie", "égaux en dignité"])
    corpus.write_text("id\teng_Latn\tfra_Latn\n" + "".join(f"s{i}\t{e}\t{f}\n" for i, (e, f) in enumerate(rows)))
    base = ["model=hf", f"model.name_or_path={folder}", "dataset=tsv", f"dataset.path={corpus}", "model.device=cpu",
            "model.dtype=float32", f"paths.outputs={tmp_path / 'outputs'}", "benchmark=none",
            "tracking.enabled=false", "score.plots=off"]
    align_task.run(composed(base + ["metric=nasca"]), tmp_path / "align")
    scores = pd.read_csv(tmp_path / "align" / "scores.csv")
    assert set(scores[scores.metric == "nasca"].layer) == {1, 3}
    neurons_task.run(composed(base + ["task=neurons", "task.languages=null", "dataset.max_units=2",
                                      "task.top_rate=0.1"]), tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    assert len(found) and set(found.layer) <= {1, 3}


def test_experts_that_cannot_be_read_are_refused_in_one_line():
    """DBRX's GLU with an activation of two arguments: its experts are no layout the probes read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from neuronxa.errors import NeuronXAError
    from neuronxa.stage_one.sites import find_sites

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("dbrx", **COMMON, **CONFIGS["dbrx"]))
    for block in model.base_model.blocks:
        del block.ffn.experts.mlp.activation_fn   # a module: replaced by a function
        block.ffn.experts.mlp.activation_fn = lambda gate, up: gate * up
    with pytest.raises(NeuronXAError, match=r"^model type 'dbrx' is a mixture-of-experts model \(DbrxExperts at "
                                            r"blocks\.0\.ffn\.experts\): expert neurons are read from .*: "
                                            r"not supported$"):
        find_sites(model)


def test_zero_experts_have_routing_weights_but_no_neurons():
    """LongCat-Flash: a layer's neurons are its 4 experts' units, then its two dense MLPs' (no zero expert's); its
    routing runs over the 4 experts and the 2 zero experts, which take part of the tokens' weight."""
    model = build("longcat_flash")
    assert layer_widths(model) == [4 * 12 + 2 * 20] * 2
    routing = pooled_states(model, tiny_tokenizer(), SENTENCES, kinds=("routing",))["routing"]["mean"]
    assert routing.shape == (2, len(SENTENCES), 4 + 2)
    assert (routing[..., :4] > 0).any() and (routing[..., 4:] > 0).any()
