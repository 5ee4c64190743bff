"""BLT (Byte Latent Transformer): its local encoder's, global transformer's and local decoder's layers are the
probed layers, in the order they run; a global layer (over patches of bytes) pools with the weights of each patch's
bytes; batches hold sentences of one length, since padding changes its patches. The tiny BLT is
test_architectures.py's (patches of one to several tokens), recomputed sentence by sentence in tests/byte_patches.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from byte_patches import recomputed_patches
from helpers import composed, tiny_tokenizer
from test_architectures import SENTENCES, tiny
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.steering import continuations
from neuronxa.stage_one import positions
from neuronxa.stage_one.forward import activation_counts, length_batches, pooled_states
from neuronxa.stage_one.patches import patch_weights
from neuronxa.stage_one.probes import KINDS, act_modules, layer_widths

# a short sentence whose last token does not start a new patch in the tiny model, and a longer one
UNEVEN = [SENTENCES[3], f"{SENTENCES[0]} {SENTENCES[3]}"]
# two sentences of one length (the same words in another order) and one of another
EVEN = [SENTENCES[3], " ".join(reversed(SENTENCES[3].split())), SENTENCES[0]]


def assert_recomputed(states: dict, expected: dict, label: str) -> None:
    for kind in KINDS:
        for pooling, layers in expected[kind].items():
            for layer, want in enumerate(layers):
                np.testing.assert_allclose(states[kind][pooling][layer], want, atol=1e-4, rtol=1e-4,
                                           err_msg=f"{label} {kind} {pooling} {layer}")


def test_patch_weights_sum_the_weights_of_each_patchs_tokens():
    """Tokens 0-1 in patch 0, token 2 in patch 1, token 3 in patch 2; patch 3 holds none."""
    weights = torch.tensor([[[0.1, 0.2, 0.3, 0.4]], [[0.25, 0.25, 0.25, 0.25]]])
    got = patch_weights(weights, torch.tensor([[0, 0, 1, 2]]), 4)
    torch.testing.assert_close(got, torch.tensor([[[0.3, 0.3, 0.4, 0.0]], [[0.5, 0.25, 0.25, 0.0]]]))


def test_the_probed_layers_are_the_encoders_the_global_transformers_and_the_decoders():
    model = tiny("blt")
    assert layer_widths(model) == [48, 64, 64, 48]
    base = model.base_model   # each layer runs once: its activation module is a hook point of its own
    assert act_modules(model) == [layer.mlp.act_fn for layer in (*base.local_encoder.layers,
                                                                 *base.global_transformer.layers,
                                                                 *base.local_decoder.layers)]
    states = pooled_states(model, tiny_tokenizer(), SENTENCES[:2])
    assert [layer.shape[1] for layer in states["hidden"]["mean"]] == [32, 48, 48, 32]


def test_batches_hold_sentences_of_one_length_only_with_same_length():
    assert length_batches([3, 5, 3, 5, 4], 4, same_length=True) == [[1, 3], [4], [0, 2]]
    assert length_batches([3, 5, 3, 5, 4], 4) == [[1, 3, 4, 0], [2]]
    assert length_batches([5, 5, 5], 2, batch_tokens=10, same_length=True) == [[0, 1], [2]]


def test_a_padded_batch_would_change_the_last_patch_so_sentences_of_other_lengths_never_share_one(monkeypatch):
    """The patcher reads no attention mask: padded, the short sentence's last patch runs on into its padding and
    the global layers' states move (by about 1 here); the tool's batches give the recomputation. The logits at the
    real bytes stay as they are alone (each byte's decoder reads no patch that holds padding), so perplexities and
    a fine-tune's loss may pad."""
    model, tokenizer = tiny("blt"), tiny_tokenizer()
    expected = recomputed_patches(model, tokenizer, UNEVEN)
    assert_recomputed(pooled_states(model, tokenizer, UNEVEN, batch_size=2), expected, "one length a batch")
    monkeypatch.setattr(positions, "SAME_LENGTH", set())
    padded = pooled_states(model, tokenizer, UNEVEN, batch_size=2)
    assert np.abs(padded["hidden"]["last"][1] - expected["hidden"]["last"][1]).max() > 0.1
    short, long = (tokenizer(sentence)["input_ids"] for sentence in UNEVEN)
    ids = torch.tensor([short + [tokenizer.pad_token_id] * (len(long) - len(short)), long])
    with torch.no_grad():
        mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(logits[0, : len(short)], model(input_ids=torch.tensor([short])).logits[0],
                                   atol=1e-5, rtol=1e-4)


def test_sentences_of_one_length_share_a_batch():
    model, tokenizer = tiny("blt"), tiny_tokenizer()
    lengths = [len(ids) for ids in tokenizer(EVEN)["input_ids"]]
    assert lengths[0] == lengths[1] != lengths[2]
    calls = []
    hook = model.base_model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        states = pooled_states(model, tokenizer, EVEN, batch_size=3)
    finally:
        hook.remove()
    assert calls == [2, 1]
    assert_recomputed(states, recomputed_patches(model, tokenizer, EVEN), "EVEN")


def test_activation_counts_count_the_bytes_whose_patch_has_the_neuron_active():
    """Per layer, Σ over sentences of the mean NAS × the sentence's tokens (every token counted)."""
    model, tokenizer = tiny("blt"), tiny_tokenizer()
    active, total, cut = activation_counts(model, tokenizer, EVEN + UNEVEN, batch_size=3)
    lengths = np.array([len(ids) for ids in tokenizer(EVEN + UNEVEN)["input_ids"]])
    mean = recomputed_patches(model, tokenizer, EVEN + UNEVEN)["nas"]["mean"]
    assert total == lengths.sum() and cut == 0
    for layer, rows in enumerate(mean):
        np.testing.assert_allclose(active[layer, : rows.shape[1]], lengths @ rows, atol=1e-3)
        assert not active[layer, rows.shape[1]:].any()


def test_deactivating_neurons_of_the_global_and_local_layers_equals_zeroing_their_down_projection_columns():
    """Neurons 3 and 7 of the global transformer's second layer (probed layer 2), neuron 5 of the local
    decoder's (probed layer 3). Weights drawn wider than the initialiser's, so that they move the logits."""
    model = copy.deepcopy(tiny("blt"))
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    ids = tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    zeroed = copy.deepcopy(model)
    zeroed.model.global_transformer.layers[1].mlp.down_proj.weight.data[:, [3, 7]] = 0
    zeroed.model.local_decoder.layers[0].mlp.down_proj.weight.data[:, 5] = 0
    with torch.no_grad():
        expected, before = zeroed(input_ids=ids).logits, model(input_ids=ids).logits
        with deactivated(model, {2: [3, 7], 3: [5]}):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(before, expected, atol=1e-3)


def test_continuations_of_prompts_batched_equal_each_prompts_alone():
    """Left padding would change the patches, so prompts of one length are generated at a time."""
    model, tokenizer, prompts = tiny("blt"), tiny_tokenizer(), [SENTENCES[1], *EVEN, SENTENCES[2]]
    assert continuations(model, tokenizer, prompts, 4) == [continuations(model, tokenizer, [p], 4)[0]
                                                           for p in prompts]


@pytest.mark.slow
def test_the_neurons_task_runs_on_a_blt_folder(tmp_path):
    from neuronxa.tasks import neurons as neurons_task

    folder = tmp_path / "blt"
    tiny("blt").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "udhr.tsv"
    rows = zip(["all human beings are born free", "everyone has the right to life", "equal in dignity and rights"],
               ["tous les êtres humains naissent libres", "toute personne a droit à la vie", "égaux en dignité"])
    corpus.write_text("id\teng_Latn\tfra_Latn\n" + "".join(f"s{i}\t{e}\t{f}\n" for i, (e, f) in enumerate(rows)))
    neurons_task.run(composed(["model=hf", f"model.name_or_path={folder}", "dataset=tsv", f"dataset.path={corpus}",
                               "model.device=cpu", "model.dtype=float32", f"paths.outputs={tmp_path / 'outputs'}",
                               "benchmark=none", "tracking.enabled=false", "score.plots=off", "task=neurons",
                               "task.languages=null", "dataset.max_units=2", "task.top_rate=0.1"]),
                     tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    widths = [48, 64, 64, 48]
    assert len(found) and all(neuron < widths[layer] for layer, neuron in zip(found.layer, found.neuron))
    assert pd.read_csv(tmp_path / "neurons" / "deactivation.csv", index_col=0).shape == (2, 2)
