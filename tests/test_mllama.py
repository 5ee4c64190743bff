"""Mllama (Llama 3.2 Vision) on text: its cross-attention layers, which the forward pass skips without image
states, keep their index with no neurons (width 0) and, as hidden state, the residual stream they pass on; its
self-attention layers' NAS and NAV against a recomputation from each FFN's input and weights, written here. A
cross-attention layer first and last (layers 0 and 2 of three), through the API, the full model's folder (vision
tower included) through the command line's code path, and the neurons task with deactivation."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import composed, tiny_tokenizer
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one import models
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.probes import layer_widths
from neuronxa.stage_one.sites import find_sites
from test_architectures import SENTENCES, TINY, VISION, cli_stage_one, pooled_by_hand

TEXT = dict(TINY, num_hidden_layers=3, cross_attention_layers=[0, 2])   # self-attention in layer 1 only


@functools.cache
def text_model():
    """A tiny MllamaForCausalLM (model type mllama_text_model): cross-attention, self-attention, cross-attention."""
    from transformers import MllamaForCausalLM, MllamaTextConfig

    torch.manual_seed(0)
    return MllamaForCausalLM(MllamaTextConfig(**TEXT)).eval()


def recomputed(model, sentences=SENTENCES) -> dict[str, dict[str, list[np.ndarray]]]:
    """kind -> pooling -> per layer (sentences, width), each sentence run alone: the FFN of a layer that runs
    from its input x (a = silu(gate x), z = a · up x, z checked against the down projection's input); a skipped
    layer has no FFN states and passes the stream on: the embeddings before the first layer that runs (the
    model's own output_hidden_states[0]), else the output of the layer before it."""
    layers = model.model.layers
    rows = {kind: {pooling: [[] for _ in layers] for pooling in ("weighted", "mean", "last")}
            for kind in ("nas", "nav", "hidden")}
    for sentence in sentences:
        ids = tiny_tokenizer()(sentence, return_tensors="pt")["input_ids"]
        seen = {}
        record = lambda key: lambda module, inputs: seen.__setitem__(key, inputs[0])
        hooks = [hook for index, layer in enumerate(layers) for hook in (
            layer.mlp.gate_proj.register_forward_pre_hook(record(("x", index))),
            layer.mlp.down_proj.register_forward_pre_hook(record(("z", index))),
            layer.register_forward_hook(lambda m, i, o, index=index: seen.__setitem__(("out", index), o)))]
        with torch.no_grad():
            stream = model.model(input_ids=ids, output_hidden_states=True).hidden_states[0][0]   # the embeddings
            for hook in hooks:
                hook.remove()
            for index, layer in enumerate(layers):
                states = {}
                if ("out", index) in seen:
                    mlp, x = layer.mlp, seen["x", index]
                    a = torch.nn.functional.silu(mlp.gate_proj(x))
                    z = a * mlp.up_proj(x)
                    torch.testing.assert_close(z, seen["z", index])
                    stream = seen["out", index][0]
                    states = {"nas": (a[0] > 0).float(), "nav": z[0].abs()}
                for kind, tokens in {"hidden": stream, **states}.items():
                    for pooling, value in pooled_by_hand(tokens.numpy().astype(np.float64)).items():
                        rows[kind][pooling][index].append(value)
    return {kind: {pooling: [np.stack(found) if found else np.zeros((len(sentences), 0)) for found in layers]
                   for pooling, layers in by.items()} for kind, by in rows.items()}


def assert_recomputed(got, expected: dict, **tolerance) -> None:
    for kind, by in expected.items():
        for pooling, layers in by.items():
            for layer, value in enumerate(layers):
                np.testing.assert_allclose(got(kind, pooling, layer), value, err_msg=f"{kind} {pooling} {layer}",
                                           **tolerance)


def test_skipped_layers_have_no_neurons_and_pass_the_stream_on():
    model = text_model()
    assert find_sites(model).without == (0, 2) and layer_widths(model) == [0, 48, 0]
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3)   # padded batches
    assert [layer.shape for layer in states["nas"]["mean"]] == [(4, 0), (4, 48), (4, 0)]
    assert_recomputed(lambda kind, pooling, layer: states[kind][pooling][layer], recomputed(model),
                      atol=1e-4, rtol=1e-4)
    first = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3, layers=1)   # a skipped layer alone
    np.testing.assert_allclose(first["hidden"]["mean"][0], states["hidden"]["mean"][0], atol=1e-5, rtol=1e-5)


def test_probing_up_to_a_skipped_layer_stops_the_forward_pass_after_the_last_layer_that_runs():
    """Four layers, cross-attention at 0 and 2; the first three probed: the pass ends after layer 1 (layer 3 never
    runs), and layer 2's hidden state is the stream layer 1 passes on, as in the full run."""
    from transformers import MllamaForCausalLM, MllamaTextConfig

    torch.manual_seed(0)
    model = MllamaForCausalLM(MllamaTextConfig(**dict(TEXT, num_hidden_layers=4))).eval()
    calls = []
    hook = model.model.layers[3].register_forward_pre_hook(lambda m, i: calls.append(1))
    first = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3, layers=3)
    hook.remove()
    assert not calls
    full = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3)
    for layer in range(3):
        np.testing.assert_allclose(first["hidden"]["mean"][layer], full["hidden"]["mean"][layer], atol=1e-5,
                                   rtol=1e-5)


def test_deactivation_reaches_the_self_attention_layers_and_refuses_a_skipped_one():
    model, ids = text_model(), tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    edited, before = copy.deepcopy(model), hooks()   # transformers keeps its own output recorders
    with torch.no_grad(), deactivated(model, {1: [1, 3]}):
        got = model(input_ids=ids).logits
        edited.model.layers[1].mlp.down_proj.weight[:, [1, 3]] = 0
        torch.testing.assert_close(got, edited(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    with pytest.raises(NeuronXAError, match=r"^decoder layer 2 has no FFN, so no neurons .*skips it on text alone"):
        with deactivated(model, {1: [0], 2: [0]}):
            pass
    assert hooks() == before   # none left


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory):
    """The full model (MllamaForConditionalGeneration, model type mllama, a one-layer vision tower) saved."""
    from transformers import AutoConfig, MllamaForConditionalGeneration

    folder = tmp_path_factory.mktemp("mllama")
    torch.manual_seed(0)
    MllamaForConditionalGeneration(AutoConfig.for_model("mllama", text_config=TEXT, vision_config=dict(
        VISION, num_global_layers=1, vision_output_dim=16, intermediate_layers_indices=[0]))).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.cli
def test_the_full_models_folder_caches_its_causal_lms_states_through_the_command_line(full_folder, tmp_path):
    """Its causal LM (the language model and head, without the vision tower) is what the command line reads."""
    model, _ = models.load(str(full_folder), dtype="float32", device="cpu")
    assert type(model).__name__ == "MllamaForCausalLM"
    store = cli_stage_one(full_folder, tmp_path)
    expected = recomputed(model, SENTENCES)
    for language, rows in {"eng_Latn": [0, 2], "deu_Latn": [3, 1]}.items():
        assert_recomputed(lambda kind, pooling, layer: store.read(language, kind, pooling, layer),
                          {kind: {pooling: [value[rows] for value in layers] for pooling, layers in by.items()}
                           for kind, by in expected.items()}, rtol=2 ** -9, atol=1e-3)


@pytest.mark.slow
def test_the_neurons_task_finds_neurons_in_the_self_attention_layer_only(full_folder, tmp_path):
    from neuronxa.tasks import neurons as neurons_task

    corpus = tmp_path / "udhr.tsv"
    rows = zip(["all human beings are born free", "everyone has the right to life", "equal in dignity and rights"],
               ["tous les êtres humains naissent libres", "toute personne a droit à la vie", "égaux en dignité"])
    corpus.write_text("id\teng_Latn\tfra_Latn\n" + "".join(f"s{i}\t{e}\t{f}\n" for i, (e, f) in enumerate(rows)))
    neurons_task.run(composed(["model=hf", f"model.name_or_path={full_folder}", "dataset=tsv",
                               f"dataset.path={corpus}", "model.device=cpu", "model.dtype=float32",
                               f"paths.outputs={tmp_path / 'outputs'}", "benchmark=none", "tracking.enabled=false",
                               "score.plots=off", "task=neurons", "task.languages=null", "dataset.max_units=2",
                               "task.top_rate=0.1"]), tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    assert len(found) and set(found.layer) == {1} and (found.neuron < 48).all()
    assert pd.read_csv(tmp_path / "neurons" / "deactivation.csv", index_col=0).shape == (2, 2)


def test_mean_activations_keep_every_layer_with_none_where_the_forward_pass_skips_it():
    """The steering task's mean a per neuron: the self-attention layer's equals its silu(gate x) averaged over
    every token of the sentences (BOS left out), recomputed from the FFN's input; the skipped layers' rows are
    zero (width 0, padded)."""
    from neuronxa.neurons.intervention import mean_activations

    model, tokenizer = text_model(), tiny_tokenizer()
    mlp, rows = model.model.layers[1].mlp, []
    hook = mlp.gate_proj.register_forward_pre_hook(lambda m, i: rows.append(i[0][0, 1:]))   # tokens after BOS
    with torch.no_grad():
        for sentence in SENTENCES:
            model.model(**tokenizer(sentence, return_tensors="pt"))
    hook.remove()
    expected = torch.nn.functional.silu(mlp.gate_proj(torch.cat(rows))).mean(dim=0).detach().numpy()
    means = mean_activations(model, tokenizer, SENTENCES, batch_size=3)
    assert means.shape == (3, TEXT["intermediate_size"])
    np.testing.assert_allclose(means[1], expected, atol=1e-5, rtol=1e-5)
    assert not means[[0, 2]].any()
