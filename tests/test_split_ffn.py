"""FFNs split over two modules, found from the structure alone (structure.split_ffn): built layouts of plain
torch modules, hidden 8, width 12; the models of transformers that have them are tested in test_architectures."""

from __future__ import annotations

import pytest
from torch import nn

from helpers import tiny_model
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models
from neuronxa.stage_one.sites import Sites, find_sites, module_paths
from neuronxa.stage_one.structure import act_module, ffn_parts, projections, split_ffn

H, I = 8, 12


def part(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


def encoder_layer() -> nn.Module:
    """BERT's layer: attention (its output projection H -> H, and here an activation module beside it),
    intermediate (dense H -> I, activation), output (dense I -> H, LayerNorm)."""
    attention = part(self=part(query=nn.Linear(H, H), key=nn.Linear(H, H), value=nn.Linear(H, H)),
                     output=part(dense=nn.Linear(H, H), LayerNorm=nn.LayerNorm(H), act=nn.Tanh()))
    return part(attention=attention, intermediate=part(dense=nn.Linear(H, I), intermediate_act_fn=nn.GELU()),
                output=part(dense=nn.Linear(I, H), LayerNorm=nn.LayerNorm(H), dropout=nn.Dropout()))


def test_an_encoder_layer_splits_its_ffn_into_intermediate_and_output():
    assert split_ffn(encoder_layer(), H) == ("output.dense", ["intermediate.dense"], I,
                                             "intermediate.intermediate_act_fn")
    assert ffn_parts(encoder_layer(), H) == split_ffn(encoder_layer(), H)


def test_the_attention_output_projection_is_never_taken_for_the_down_projection():
    """An attention block holding an activation and H -> H projections is no input half; the output projection
    H -> H is no down projection: without the FFN's halves, nothing is found."""
    layer = encoder_layer()
    del layer.output
    assert split_ffn(layer, H) is None
    layer.add_module("output", part(dense=nn.Linear(H, H)))
    assert split_ffn(layer, H) is None


def test_a_gated_input_half_and_a_down_projection_child_split_a_gated_ffn():
    """CPM-Ant's FFN: w_in (w_0 and w_1, H -> I, and the activation), w_out (I -> H, a child itself)."""
    ffn = part(w_in=part(w_0=nn.Linear(H, I), w_1=nn.Linear(H, I), act=nn.GELU()), dropout=nn.Dropout(),
               w_out=nn.Linear(I, H))
    assert split_ffn(ffn, H) == ("w_out", ["w_in.w_0", "w_in.w_1"], I, "w_in.act")


def test_an_input_half_without_an_activation_module_or_of_another_width_is_not_split():
    assert split_ffn(part(intermediate=part(dense=nn.Linear(H, I)), output=part(dense=nn.Linear(I, H))), H) is None
    assert split_ffn(part(intermediate=part(dense=nn.Linear(H, I), act=nn.ReLU()),
                          output=part(dense=nn.Linear(I + 1, H))), H) is None


def test_an_ffn_with_its_own_projections_is_read_from_them_first():
    mlp = part(up_proj=nn.Linear(H, I), act_fn=nn.SiLU(), down_proj=nn.Linear(I, H),
               extra=part(dense=nn.Linear(H, I), act=nn.ReLU()))
    assert ffn_parts(mlp, H) == (*projections(mlp, H), act_module(mlp)) == ("down_proj", ["up_proj"], I, "act_fn")


def test_the_default_models_sites_and_recorded_paths_stay_as_they_were():
    """Gemma 3 (the default model's type) and GPT-2: the sites and cache metadata found before split FFNs were."""
    gemma, gpt2 = tiny_model("gemma3"), tiny_model("gpt2")
    assert find_sites(gemma) == Sites("layers", "mlp", "act_fn", "down_proj", True, "gate_proj", "up_proj")
    assert module_paths(gemma) == {"nas": "layers.{layer}.mlp.act_fn (output)",
                                   "nav": "layers.{layer}.mlp.down_proj (input)", "hidden": "layers.{layer} (output)"}
    assert find_sites(gpt2) == Sites("h", "mlp", "act", "c_proj", False)


def test_xmod_without_a_default_language_is_refused_in_one_line_before_it_is_built(tmp_path):
    from transformers import XmodConfig

    XmodConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12, vocab_size=100,
               is_decoder=True).save_pretrained(tmp_path)
    with pytest.raises(NeuronXAError, match=r"^model type 'xmod' picks its language adapters by lang_ids, .*"
                                            r"set default_language in its config.json"):
        models.meta_model(models.model_spec(str(tmp_path)))
    XmodConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12, vocab_size=100,
               is_decoder=True, default_language="en_XX").save_pretrained(tmp_path)
    assert find_sites(models.meta_model(models.model_spec(str(tmp_path)))).down == "output.dense"
