"""Likelihood: every token after the first scored once, in windows when a unit is longer than max_length,
checked against a manual log-softmax."""

import math

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from neuronxa.stage_one.likelihood import log_likelihood, negative_bits_per_byte, perplexity, windows

TEXTS = ["all human beings are born free", "tous les êtres humains naissent libres et égaux en dignité et droits"]


def manual_nll(model, ids):
    """Σ −log p(ids[t] | ids[:t]) for t ≥ 1, one full forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return -sum(float(torch.log_softmax(logits[t - 1], dim=-1)[ids[t]]) for t in range(1, len(ids)))


def test_windows_predict_every_token_after_the_first_once():
    for n, length in [(1, 4), (2, 4), (10, 4), (11, 4), (7, 7), (8, 7), (100, 2)]:
        spans = windows(n, length)
        predicted = [t for start, end in spans for t in range(start + 1, end)]
        assert predicted == list(range(1, n)) and all(end - start <= length for start, end in spans)
    assert windows(10, 4) == [(0, 4), (3, 7), (6, 10)]


def test_bits_per_byte_against_a_manual_log_softmax():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    nll = sum(manual_nll(model, tokenizer(text)["input_ids"]) for text in TEXTS)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert negative_bits_per_byte(model, tokenizer, TEXTS) == pytest.approx(-nll / math.log(2) / n_bytes, rel=1e-5)


def test_a_long_unit_is_scored_whole_in_windows_not_truncated():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    ids = tokenizer(TEXTS[1])["input_ids"]
    assert len(ids) > 6
    nll, predicted = log_likelihood(model, tokenizer, [TEXTS[1]], max_length=4)
    assert predicted == len(ids) - 1                          # every token, not the first 4
    expected = sum(manual_nll(model, ids[start:end]) for start, end in windows(len(ids), 4))
    assert nll == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, tokenizer, [TEXTS[1]], max_length=4) == pytest.approx(math.exp(expected / predicted))
    whole, _ = log_likelihood(model, tokenizer, [TEXTS[1]], max_length=512)
    assert whole == pytest.approx(manual_nll(model, ids), rel=1e-5)
