"""How well a model predicts text: total log-likelihood, perplexity and bits per byte, with no silent truncation.

A unit longer than ``max_length`` tokens is scored in disjoint windows, as lm-evaluation-harness's rolling
log-likelihood does: every token after the first is predicted exactly once, each window starting one token
before the tokens it predicts (that token its context). Bits per byte then divide by the bytes of the whole
text, all of which were scored.
"""

from __future__ import annotations

import math

import torch

from neuronxa.stage_one.forward import model_device
from neuronxa.stage_one.options import check_max_length


def windows(n_tokens: int, max_length: int) -> list[tuple[int, int]]:
    """(start, end) token spans of at most ``max_length`` tokens whose predictions (positions start+1..end-1)
    cover positions 1..n_tokens-1 once each."""
    check_max_length(max_length)
    spans, target = [], 1
    while target < n_tokens:
        end = min(target + max_length - 1, n_tokens)
        spans.append((target - 1, end))
        target = end
    return spans


def log_likelihood(model, tokenizer, texts: list[str], max_length: int = 512) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of the texts' tokens after the first, and how many tokens that is."""
    device = model_device(model)
    nll, predicted = 0.0, 0
    with torch.inference_mode():
        for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
            for start, end in windows(len(ids), max_length):  # one window at a time: logits over a vocabulary are big
                inputs = torch.tensor([ids[start:end]], device=device)
                logits = model(input_ids=inputs, use_cache=False).logits[0, :-1].float()
                nll += float(torch.nn.functional.cross_entropy(logits, inputs[0, 1:], reduction="sum"))
                predicted += end - start - 1
    return nll, predicted


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    nll, tokens = log_likelihood(model, tokenizer, texts, max_length)
    return math.exp(nll / tokens)


def negative_bits_per_byte(model, tokenizer, texts: list[str], max_length: int = 512) -> float:
    """−(total negative log-likelihood in bits) / (total UTF-8 bytes): a tokenizer-independent LM measure."""
    nll, _ = log_likelihood(model, tokenizer, texts, max_length)
    return -nll / math.log(2) / sum(len(text.encode("utf-8")) for text in texts)
