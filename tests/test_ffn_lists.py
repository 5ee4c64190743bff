"""FFNs kept in a list beside the decoder layers (ffn_lists.py), as XLM keeps them: a tiny random XLM (2 layers,
hidden 16, FFN width 64, seeded, float32, CPU) read by structure, its states against a recomputation written here,
its neurons deactivated, and the same sites named in the config (``model.sites.ffn_list``), well and badly.
test_architectures checks it with every other architecture too (API and command line)."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import FIXTURES, assert_refused_before_weights_load, composed, tiny_overrides, tiny_tokenizer
from neuronxa.data.readers import read_tsv
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one import ffn_lists
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.models import spec_from_config
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.sites import Sites, find_sites, layer_widths, module_paths, name_sites
from neuronxa.tasks.common import stage_one_options

SENTENCES = ["all human beings are born free and equal in dignity and rights", "tous", "la vie et droits"]
XLM_SITES = Sites("layer_norm2", "", None, "lin2", False, ffn_list="ffns")


@functools.cache
def tiny_xlm():
    from transformers import XLMConfig, XLMWithLMHeadModel

    torch.manual_seed(0)
    return XLMWithLMHeadModel(XLMConfig(vocab_size=128, emb_dim=16, n_layers=2, n_heads=2)).eval()


def test_the_ffn_list_is_found_beside_the_layers_and_the_table_names_the_hidden_states():
    model = tiny_xlm()
    assert find_sites(model) == XLM_SITES
    assert layer_widths(model) == [64, 64]
    assert module_paths(model) == {"nas": "ffns.{layer}.lin2 (input)", "nav": "ffns.{layer}.lin2 (input)",
                                   "hidden": "layer_norm2.{layer} (output)"}


def test_an_ffn_list_whose_layers_structure_cannot_tell_is_refused_in_one_line(monkeypatch):
    monkeypatch.delitem(ffn_lists.OUTPUTS, "xlm")
    with pytest.raises(NeuronXAError, match=r"^model type 'xlm' keeps its FFNs in a list beside its decoder layers "
                                            r"\(ffns\) .*model.sites.layers \(and model.sites.ffn_list: ffns\)$"):
        find_sites(copy.deepcopy(tiny_xlm()))


def recomputed(model, sentence: str) -> dict[str, list[np.ndarray]]:
    """Per layer, the mean over the sentence's tokens (run alone) of NAS = 1[a > 0], NAV = |z| with
    z = a = gelu(lin1 x) (x: ffns[i]'s input; gelu with erf, written here) and the hidden state (layer_norm2[i]'s
    output)."""
    base, seen = model.base_model, {}
    hooks = [ffn.register_forward_pre_hook(lambda m, i, index=index: seen.__setitem__(("x", index), i[0].clone()))
             for index, ffn in enumerate(base.ffns)]
    hooks += [norm.register_forward_hook(lambda m, i, o, index=index: seen.__setitem__(("hidden", index), o.clone()))
              for index, norm in enumerate(base.layer_norm2)]
    ids = tiny_tokenizer()(sentence, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base(input_ids=ids, attention_mask=torch.ones_like(ids))
        for hook in hooks:
            hook.remove()
        states = {"nas": [], "nav": [], "hidden": []}
        for index, ffn in enumerate(base.ffns):
            h = seen["x", index][0] @ ffn.lin1.weight.T + ffn.lin1.bias
            a = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            for kind, tokens in (("nas", (a > 0).double()), ("nav", a.abs().double()),
                                 ("hidden", seen["hidden", index][0].double())):
                states[kind].append(tokens.mean(0).numpy())
    return states


def test_pooled_states_of_padded_batches_match_the_recomputation():
    """All layers, and the first alone (the forward pass stopped at layer_norm2[0])."""
    model = tiny_xlm()
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3, poolings=("mean",))
    first = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3, poolings=("mean",), layers=1)
    for row, sentence in enumerate(SENTENCES):
        for kind, layers in recomputed(model, sentence).items():
            assert first[kind]["mean"].shape[0] == 1
            for layer, value in enumerate(layers):
                for got in (states, first) if layer == 0 else (states,):
                    np.testing.assert_allclose(got[kind]["mean"][layer, row], value, atol=1e-4, rtol=1e-4,
                                               err_msg=f"{kind} layer {layer} sentence {row}")


def test_deactivating_neurons_equals_zeroing_their_down_projection_inputs():
    """a = z = the input of lin2 of ffns[1] (in the list beside the layers): a_j = 0 removes lin2's column j."""
    model, chosen = tiny_xlm(), [1, 3, 40]
    ids = tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    edited = copy.deepcopy(model)
    with torch.no_grad(), deactivated(model, {1: chosen}):
        got = model(input_ids=ids).logits
        edited.transformer.ffns[1].lin2.weight[:, chosen] = 0
        expected = edited(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, model(input_ids=ids).logits)


@pytest.fixture
def xlm_folder(tmp_path):
    folder = tmp_path / "tiny-xlm"
    tiny_xlm().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


NAMED = 'model.sites={layers: layer_norm2, ffn_list: ffns, ffn: "", act: null, down: lin2, gated: false}'


def test_an_ffn_list_named_in_the_config_keys_the_cache_and_gives_the_found_states(xlm_folder, tmp_path):
    cfg = composed(tiny_overrides(xlm_folder, tmp_path) + [NAMED])
    options = stage_one_options(cfg, cfg.model)
    assert options.sites == XLM_SITES
    assert options.cache_key({"model": "m"}, "toy")["model_sites"]["ffn_list"] == "ffns"
    unlisted = StageOneOptions(sites=Sites("layers", "mlp", "act_fn", "down_proj", True))
    assert "ffn_list" not in unlisted.cache_key({"model": "m"}, "toy")["model_sites"]   # other keys unchanged
    corpus, spec = read_tsv(FIXTURES / "toy.tsv"), spec_from_config(cfg.model)
    named, _ = extract_corpus(corpus, spec, tmp_path / "cache", options=options)
    found, _ = extract_corpus(corpus, spec, tmp_path / "cache", options=StageOneOptions(dtype="float32"))
    assert named.path != found.path
    for kind in ("nav", "hidden"):
        np.testing.assert_allclose(named.read("fra_Latn", kind, "mean"), found.read("fra_Latn", kind, "mean"))


@pytest.mark.parametrize("sites, said", [
    (NAMED.replace("ffn_list: ffns", "ffn_list: nope"), "model.sites.ffn_list: the model has no module nope"),
    (NAMED.replace("ffn_list: ffns", "ffn_list: embeddings"),
     "model.sites.ffn_list: embeddings is a Embedding, not a list as long as model.sites.layers (layer_norm2: 2"),
    (NAMED.replace("down: lin2", "down: lin3"), "model.sites.down: the model has no module ffns.0.lin3"),
])
def test_a_bad_ffn_list_fails_in_one_line_before_weights_load(xlm_folder, tmp_path, monkeypatch, sites, said):
    assert_refused_before_weights_load(xlm_folder, tmp_path, monkeypatch, sites, said)


def test_an_ffn_list_shorter_than_the_layers_is_refused_in_one_line():
    model = copy.deepcopy(tiny_xlm())
    model.transformer.ffns = nn.ModuleList(model.transformer.ffns[:1])
    with pytest.raises(NeuronXAError, match=r"^model.sites.ffn_list: ffns is a ModuleList of 1, not a list as long "
                                            r"as model.sites.layers \(layer_norm2: 2 layers\)$"):
        name_sites(model, XLM_SITES)


def test_the_neurons_task_reads_and_deactivates_the_neurons_of_the_ffn_list(xlm_folder, tmp_path):
    import pandas as pd

    from neuronxa.tasks import neurons as neurons_task

    overrides = tiny_overrides(xlm_folder, tmp_path) + ["task=neurons", "task.languages=null", "dataset.max_units=2",
                                                       "task.top_rate=0.1"]
    neurons_task.run(composed(overrides), tmp_path / "run")
    found = pd.read_csv(tmp_path / "run" / "neurons.csv")
    assert len(found) > 0 and set(found.layer) <= {0, 1} and (found.neuron < 64).all()
    assert pd.read_csv(tmp_path / "run" / "deactivation.csv", index_col=0).shape == (2, 2)
