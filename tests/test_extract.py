"""Hooked, pooled states against a manual computation on tiny Llama-, Gemma- and GPT-2-shaped models.

The oracle runs each sentence alone (no padding) through the full model, takes each FFN's input, recomputes
a and z from the FFN's weights by hand, checks that z really is what the down projection consumes, and pools
with plain loops. Hidden states come from the model's own ``output_hidden_states``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SENTENCES, manual_token_states
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.forward import length_batches, pooled_states, tokenize
from neuronxa.stage_one.probes import decoder_layers


def manual_pool(tokens: np.ndarray, pooling: str, skip_first: bool = False) -> np.ndarray:
    """Pool (tokens, width) with explicit loops: weighted w_t = t / sum(k), mean 1/T, last token."""
    rows = tokens[1:] if skip_first else tokens
    total = np.zeros(rows.shape[1])
    if pooling == "last":
        return rows[-1]
    for t, row in enumerate(rows, start=1):
        weight = t / (len(rows) * (len(rows) + 1) / 2) if pooling == "weighted" else 1 / len(rows)
        total += weight * row
    return total


@pytest.mark.parametrize("skip_bos", [False, True])
def test_hooked_states_match_manual_computation(tiny, skip_bos):
    kind, model, tokenizer = tiny
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=3, skip_bos=skip_bos)
    layers = len(decoder_layers(model))
    assert states["nas"]["weighted"].shape == (layers, len(SENTENCES), 24)
    assert states["hidden"]["mean"].shape == (layers, len(SENTENCES), 16)
    skip = skip_bos and kind != "gpt2"  # GPT-2's tokenizer adds no BOS: nothing to skip
    for row, ids in enumerate(tokenize(tokenizer, SENTENCES, 512)[0]):
        manual = manual_token_states(model, ids)
        for state_kind, per_layer in manual.items():
            for layer, tokens in enumerate(per_layer):
                for pooling in ("weighted", "mean", "last"):
                    np.testing.assert_allclose(
                        states[state_kind][pooling][layer, row], manual_pool(tokens, pooling, skip),
                        rtol=1e-4, atol=1e-5, err_msg=f"{kind} {state_kind} {pooling} layer {layer} row {row}",
                    )


def test_last_layer_hidden_is_the_residual_stream_before_the_final_norm(tiny):
    kind, model, tokenizer = tiny
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=2)
    norm = model.base_model.ln_f if kind == "gpt2" else model.base_model.norm
    for row, ids in enumerate(tokenize(tokenizer, SENTENCES, 512)[0]):
        with torch.no_grad():
            final = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
            ours = norm(torch.from_numpy(states["hidden"]["last"][-1, row]))
        torch.testing.assert_close(ours, final, rtol=1e-4, atol=1e-5)


def test_batch_size_and_padding_do_not_change_results(tiny):
    _, model, tokenizer = tiny
    alone = pooled_states(model, tokenizer, SENTENCES, batch_size=1)
    padded = pooled_states(model, tokenizer, SENTENCES, batch_size=5)
    for kind in alone:
        for pooling in alone[kind]:
            np.testing.assert_allclose(alone[kind][pooling], padded[kind][pooling], rtol=1e-4, atol=1e-5)


def test_nas_is_a_share_of_active_tokens(tiny):
    _, model, tokenizer = tiny
    states = pooled_states(model, tokenizer, SENTENCES)
    assert set(np.unique(states["nas"]["last"])) <= {0.0, 1.0}
    assert states["nas"]["mean"].min() >= 0 and states["nas"]["mean"].max() <= 1 + 1e-6
    assert (states["nav"]["weighted"] >= 0).all()


def test_truncation_is_counted_and_applied(tiny):
    _, model, tokenizer = tiny
    states = pooled_states(model, tokenizer, SENTENCES, max_length=4)
    assert states.n_truncated == 3
    assert states.n_tokens.max() == 4


def test_max_length_below_two_is_refused(tiny):
    _, model, tokenizer = tiny
    with pytest.raises(NeuronXAError, match="at least 2 tokens"):
        pooled_states(model, tokenizer, SENTENCES, max_length=1)


def test_length_batches_group_similar_lengths():
    assert length_batches([3, 10, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]


def test_hooks_are_removed_after_use(tiny):
    _, model, tokenizer = tiny
    pooled_states(model, tokenizer, SENTENCES[:2])
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


def test_asking_for_the_first_layers_stops_the_forward_pass_there(tiny):
    _, model, tokenizer = tiny
    full = pooled_states(model, tokenizer, SENTENCES, batch_size=3)
    ran = []
    handles = [layer.register_forward_pre_hook(lambda m, i, index=index: ran.append(index))
               for index, layer in enumerate(decoder_layers(model))]
    try:
        first = pooled_states(model, tokenizer, SENTENCES, batch_size=3, layers=2)
    finally:
        for handle in handles:
            handle.remove()
    assert set(ran) == {0, 1}                                  # layer 2 never ran
    for kind in full:
        for pooling in full[kind]:
            assert first[kind][pooling].shape[0] == 2
            np.testing.assert_allclose(first[kind][pooling], full[kind][pooling][:2], rtol=1e-5, atol=1e-6)
    assert all(not module._forward_hooks for module in model.modules())
