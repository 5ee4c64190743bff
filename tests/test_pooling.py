"""Pooling weights against hand-computed values."""

import pytest
import torch

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.pooling import pooling_weights, real_token_mask


def test_weights_by_hand_with_padding():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    weighted, mean, last = pooling_weights(mask)
    torch.testing.assert_close(weighted, torch.tensor([[1 / 6, 2 / 6, 3 / 6, 0], [1 / 3, 2 / 3, 0, 0]]))
    torch.testing.assert_close(mean, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0], [1 / 2, 1 / 2, 0, 0]]))
    torch.testing.assert_close(last, torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0]]))


def test_skip_bos_renumbers_from_the_next_token():
    ids = torch.tensor([[1, 7, 8, 0], [5, 6, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mask = real_token_mask(attention, ids, bos_token_id=1, skip_bos=True)
    torch.testing.assert_close(mask, torch.tensor([[0.0, 1, 1, 0], [1, 1, 0, 0]]))  # row 2 has no BOS
    weighted = pooling_weights(mask, ("weighted",))[0]
    torch.testing.assert_close(weighted, torch.tensor([[0, 1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0, 0]]))


def test_weights_sum_to_one_on_real_tokens():
    mask = (torch.rand(6, 9, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    mask[:, 0] = 1
    assert torch.allclose(pooling_weights(mask).sum(dim=2), torch.ones(3, 6))


def test_unknown_pooling_is_refused():
    with pytest.raises(NeuronXAError, match="median"):
        pooling_weights(torch.ones(1, 2), ("median",))
