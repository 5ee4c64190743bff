"""Byte Latent Transformer (BLT, model type ``blt``): a local encoder over the bytes, a global transformer over
patches of bytes (cut where the model's small entropy model is unsure of the next byte) and a local decoder over
the bytes again. Its probed layers are the three lists' layers in the order they run (runs.py: ``SCHEDULES``).

A global layer's state at a byte is the state of the byte's patch (the model's own ``patch_ids``), so that every
layer pools over the sentence's bytes with the same weights: a patch weighs as much as the counted bytes it holds
(``mean``: its share of the bytes; ``last``: the patch of the last byte; ``sum``: its counted bytes, so that an
activation probability is a share of bytes in every layer).

Its patcher reads no attention mask: in a padded batch a row's last patch would run on into the row's padding and
mix padding bytes into its state, so its batches hold sentences of one length (``positions.SAME_LENGTH``). What
structure cannot tell (which list runs on patches, which module receives the patch ids) is the table ``PATCHED``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronxa.stage_one.runs import schedule
from neuronxa.stage_one.structure import model_type, submodule

# model type -> (the list of layers that run on patches, the module called with the patch ids of the bytes)
PATCHED = {"blt": ("global_transformer.layers", "local_encoder")}


def patched_layers(model: nn.Module) -> frozenset[int]:
    """The probed layers that run on patches rather than on the input's tokens (none for most models)."""
    entry = PATCHED.get(model_type(model))
    if entry is None:
        return frozenset()
    return frozenset(index for index, (path, _) in enumerate(schedule(model)) if path == entry[0])


def patch_hooks(model: nn.Module, store: Callable[[torch.Tensor, int], None]) -> list:
    """A hook handing ``store`` each forward pass's patch ids (batch, tokens) and number of patches, before the
    layers over patches run; none for most models. Returns the hook handles."""
    entry = PATCHED.get(model_type(model))
    if entry is None:
        return []

    def on_call(module, args, kwargs) -> None:
        store(kwargs["patch_ids"], kwargs["num_patches"])

    return [submodule(model.base_model, entry[1]).register_forward_pre_hook(on_call, with_kwargs=True)]


def patch_weights(weights: torch.Tensor, patch_ids: torch.Tensor, patches: int) -> torch.Tensor:
    """(poolings, batch, tokens) pooling weights over tokens -> (poolings, batch, patches): each patch the sum of
    the weights of its tokens."""
    index = patch_ids.to(weights.device, torch.long).expand(weights.shape[0], -1, -1)
    return weights.new_zeros(*weights.shape[:2], patches).scatter_add_(2, index, weights)
