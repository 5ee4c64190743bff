"""Sentence pooling as weights over token positions, so that every pooling is one contraction on the device.

Positions t = 1..T count real tokens from the first one (padding never counts):
``weighted`` w_t = t / Σk, ``mean`` w_t = 1 / T, ``last`` puts all weight on the last real token; ``sum``
(w_t = 1, not a sentence pooling) counts, e.g. the tokens on which a neuron is active.
"""

from __future__ import annotations

import torch

from neuronxa.errors import NeuronXAError

POOLINGS = ("weighted", "mean", "last")


def check_pooling(name: str) -> None:
    """One line naming the poolings unless ``name`` is one of them."""
    if name not in POOLINGS:
        raise NeuronXAError(f"unknown pooling {name!r}: choose from {', '.join(POOLINGS)}")


def real_token_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor, bos_token_id: int | None,
                    skip_bos: bool, count_from: torch.Tensor | None = None) -> torch.Tensor:
    """1 for the tokens that pooling counts: real tokens, without a leading BOS when ``skip_bos``, and only from
    token ``count_from[b]`` on in row b (e.g. a response after its prompt) when given; tokens count from each
    row's first real one (after its padding, where batches are left-padded)."""
    mask = attention_mask.to(torch.float32)
    first = attention_mask.argmax(dim=1)   # each row's first real token: 0 unless left-padded
    if skip_bos and bos_token_id is not None:
        rows = torch.arange(len(mask), device=mask.device)
        mask[rows, first] = mask[rows, first] * (input_ids[rows, first] != bos_token_id)
    if count_from is not None:
        positions = torch.arange(mask.shape[1], device=mask.device)[None, :] - first[:, None]
        mask = mask * (positions >= count_from[:, None].to(mask.device))
    return mask


def pooling_weights(mask: torch.Tensor, poolings: tuple[str, ...] = POOLINGS) -> torch.Tensor:
    """Weights of shape (poolings, batch, tokens) for a (batch, tokens) mask of counted tokens."""
    position = torch.cumsum(mask, dim=1) * mask  # 1..T on counted tokens, 0 elsewhere
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)
    weights = []
    for pooling in poolings:
        if pooling == "weighted":
            weights.append(position / (count * (count + 1) / 2))
        elif pooling == "mean":
            weights.append(mask / count)
        elif pooling == "last":
            weights.append((position == count) * mask)
        elif pooling == "sum":
            weights.append(mask)
        else:
            check_pooling(pooling)   # not one of them: raises
    return torch.stack(weights)


def pool(weights: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(poolings, batch, tokens) weights x (batch, tokens, width) states -> (poolings, batch, width), float32."""
    return torch.einsum("pbt,btw->pbw", weights, states.to(torch.float32))
