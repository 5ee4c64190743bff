"""Models whose decoder layers run on more positions than the input has tokens (ProphetNet's n-gram streams after
its main stream, CPM-Ant's prompt tokens before the input), and CPM-Ant's padding, read from token id 0 as left
padding (neuronxa/stage_one/positions.py). Their states against the recomputation are checked with every other
architecture in test_architectures.py (API and command line); here the rows it keeps, padding, deactivation and
the refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import tiny_tokenizer
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.pooling import real_token_mask
from test_architectures import DOWN, INPUT_ROWS, SENTENCES, ffn_of, find_layers, first, tiny

TYPES = ["cpmant", "prophetnet", "reformer"]


@pytest.mark.parametrize("kind", TYPES)
def test_the_rows_the_recomputation_keeps_are_the_models_own_hidden_states(kind):
    """The test's INPUT_ROWS against the hidden states the model itself returns: ProphetNet's main stream,
    CPM-Ant's states without its prompt, Reformer's without its padding to a multiple of its chunk length (each
    layer's output is the next layer's input; Reformer's layers return its second stream first, which is what
    its hidden states hold)."""
    model = tiny(kind)
    ids = tiny_tokenizer()(SENTENCES[2], return_tensors="pt")["input_ids"]
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in find_layers(model)]
    with torch.no_grad():
        returned = model.base_model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for hook in hooks:
        hook.remove()
    keep = INPUT_ROWS[kind](model.config, ids.shape[1])
    assert outputs[0].shape[1] > ids.shape[1]   # the layers do run on more positions
    for layer, output in enumerate(outputs[:-1]):
        torch.testing.assert_close(output[:, keep], returned[layer + 1][:, : ids.shape[1]])   # Reformer's: padded


def test_cpm_ant_reads_a_sentence_alike_alone_and_left_padded_whatever_the_tokenizers_pad_id():
    """CPM-Ant's batches are left-padded with id 0, the padding it reads, not with the tokenizer's pad id (here
    [UNK]'s, 2); BOS skipped, so that the left-padded pooling weights renumber from the first real token."""
    model, tokenizer = tiny("cpmant"), copy.deepcopy(tiny_tokenizer())   # the shared one keeps its pad token
    tokenizer.pad_token = "[UNK]"
    batched = pooled_states(model, tokenizer, SENTENCES, batch_size=len(SENTENCES), skip_bos=True)
    for row, sentence in enumerate(SENTENCES):
        alone = pooled_states(model, tokenizer, [sentence], batch_size=1, skip_bos=True)
        for kind, by in alone.items():
            for pooling, states in by.items():
                np.testing.assert_allclose(batched[kind][pooling][:, row], states[:, 0], atol=1e-4, rtol=1e-4,
                                           err_msg=f"{kind} {pooling} {row}")


def test_left_padded_masks_count_from_each_rows_first_real_token():
    ids = torch.tensor([[0, 1, 7, 8], [0, 0, 5, 6]])
    attention = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    skipped = real_token_mask(attention, ids, bos_token_id=1, skip_bos=True)
    torch.testing.assert_close(skipped, torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]))   # row 2 has no BOS
    after = real_token_mask(attention, ids, None, False, count_from=torch.tensor([2, 1]))
    torch.testing.assert_close(after, torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 1]]))


def test_cpm_ant_counts_the_texts_tokens_after_a_prompt_in_a_padded_batch_as_alone():
    model, tokenizer = tiny("cpmant"), tiny_tokenizer()
    together, total, _ = activation_counts(model, tokenizer, SENTENCES, prompt="tous ", batch_size=len(SENTENCES))
    alone = [activation_counts(model, tokenizer, [sentence], prompt="tous ", batch_size=1) for sentence in SENTENCES]
    assert total == sum(counted for _, counted, _ in alone) == sum(len(s.split()) for s in SENTENCES)
    assert (together != sum(counts for counts, _, _ in alone)).sum() <= 2   # a > 0 may flip within rounding


@pytest.mark.parametrize("kind, layer", [("cpmant", 0), ("prophetnet", 0), ("prophetnet", 1), ("reformer", 0)])
def test_deactivating_neurons_zeroes_their_down_projection_inputs_on_every_position(kind, layer):
    """As zeroing the neurons' columns of the down projection in the model: on the prompt's positions too
    (CPM-Ant) and on the n-gram streams too (ProphetNet, whose logits come from its first predicting stream: its
    last layer's main stream reaches no logit)."""
    model, chosen = tiny(kind), [1, 3]
    ids = tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    edited = copy.deepcopy(model)
    with torch.no_grad(), deactivated(model, {layer: chosen}):
        got = model(input_ids=ids).logits
        first(ffn_of(find_layers(edited)[layer]), DOWN).weight[:, chosen] = 0
        expected = edited(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, model(input_ids=ids).logits.detach())


def test_an_ffn_on_more_positions_than_tokens_that_no_table_names_is_refused_in_one_line():
    """A toy: Llama's first FFN run on its input twice over, concatenated along the tokens."""
    model = copy.deepcopy(tiny("llama"))
    mlp = find_layers(model)[0].mlp
    mlp.register_forward_pre_hook(lambda m, inputs: (torch.cat([inputs[0], inputs[0]], dim=1),))
    mlp.register_forward_hook(lambda m, inputs, output: output[:, : output.shape[1] // 2])
    with pytest.raises(NeuronXAError, match=r"^decoder layer 0's nas states have shape \(1, 26, 48\), not "
                                            r"\(batch, tokens, width\) \(several residual streams\?\): not supported$"):
        pooled_states(model, tiny_tokenizer(), SENTENCES[:1])


def test_a_layer_on_other_positions_than_its_table_says_is_refused_in_one_line():
    model = copy.deepcopy(tiny("prophetnet"))
    model.config.ngram = 1   # the decoder keeps its own 2 n-gram streams
    with pytest.raises(NeuronXAError, match=r"^a prophetnet layer ran on states of shape \(1, 6, 48\), not "
                                            r"\(batch, 4, width\) for 2 tokens: not supported$"):
        pooled_states(model, tiny_tokenizer(), ["tous"])


def test_a_sentence_holding_the_id_cpm_ant_reads_as_padding_is_refused_in_one_line():
    with pytest.raises(NeuronXAError, match=r"^sentence 1 holds token id 0, which cpmant reads as padding"):
        pooled_states(tiny("cpmant"), tiny_tokenizer(), ["tous", "tous <pad> la"])


def test_cpm_ant_continues_a_prompt_alike_alone_and_left_padded_whatever_the_tokenizers_pad_id():
    """The steering task's greedy continuations: prompts padded with id 0, the padding CPM-Ant reads (with the
    tokenizer's pad id, [UNK]'s, the shorter prompt's continuation changes)."""
    from neuronxa.neurons.steering import continuations

    model, tokenizer = tiny("cpmant"), copy.deepcopy(tiny_tokenizer())
    tokenizer.pad_token = "[UNK]"
    prompts = SENTENCES[:2]
    assert continuations(model, tokenizer, prompts, 4) == [continuations(model, tokenizer, [p], 4)[0] for p in prompts]


def test_reformer_with_lsh_layers_needs_a_hash_seed_and_a_bucket_count_refused_in_one_line_before_it_is_built(
        tmp_path):
    """Without them its LSH rotations are drawn anew each forward pass and its bucket count is set from the first
    sentence; a Reformer of local attention layers only needs neither."""
    from transformers import ReformerConfig

    from neuronxa.stage_one import models
    from neuronxa.stage_one.sites import find_sites

    sizes = dict(hidden_size=8, num_attention_heads=2, attention_head_size=4, feed_forward_size=12, vocab_size=100,
                 axial_pos_shape=[8, 16], axial_pos_embds_dim=[4, 4], is_decoder=True)
    for fields in (dict(attn_layers=["lsh", "local"]), dict(attn_layers=["lsh"], hash_seed=0)):
        ReformerConfig(**sizes, **fields).save_pretrained(tmp_path)
        with pytest.raises(NeuronXAError, match=r"^model type 'reformer' with LSH attention layers draws its hashing "
                                                r"rotations anew .* set hash_seed and num_buckets in its config.json$"):
            models.meta_model(models.model_spec(str(tmp_path)))
    for fields in (dict(attn_layers=["lsh", "local"], hash_seed=0, num_buckets=4), dict(attn_layers=["local"])):
        ReformerConfig(**sizes, **fields).save_pretrained(tmp_path)
        assert find_sites(models.meta_model(models.model_spec(str(tmp_path)))).down == "output.dense"


def test_reformers_batches_hold_sentences_of_one_length_since_its_lsh_buckets_sort_padding_in(monkeypatch):
    """Alone and in the tool's batches its states agree exactly; padded, they would move."""
    from neuronxa.stage_one import positions

    model, tokenizer = tiny("reformer"), tiny_tokenizer()
    alone = [pooled_states(model, tokenizer, [sentence]) for sentence in SENTENCES]
    batched = pooled_states(model, tokenizer, SENTENCES, batch_size=4)
    monkeypatch.setattr(positions, "SAME_LENGTH", set())
    padded = pooled_states(model, tokenizer, SENTENCES, batch_size=4)
    moved = 0.0
    for row, one in enumerate(alone):
        for layer in range(2):
            np.testing.assert_allclose(batched["nav"]["mean"][layer][row], one["nav"]["mean"][layer][0], atol=1e-5)
            moved = max(moved, np.abs(padded["nav"]["mean"][layer][row] - one["nav"]["mean"][layer][0]).max())
    assert moved > 1e-5
