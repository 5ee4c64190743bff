"""BLT, whose global transformer runs on patches of bytes, recomputed sentence by sentence: hooks record the FFN
input x, the down projection's input and the output of every layer of the local encoder, the global transformer
and the local decoder (in that order), and the patch of each byte as the model passes it to its local encoder; a
and z are computed from the weights, written here, and a global layer's per-patch values are spread over the
bytes of each patch (byte t gets its patch's value) before pooling over the bytes."""

import numpy as np
import torch

from helpers import POOLS, hooked_pass, pool_by_hand

KINDS = ("nas", "nav", "hidden")


def blt_layers(model) -> list[tuple[torch.nn.Module, bool]]:
    """Every layer in the order it runs, with whether it runs on patches."""
    base = model.base_model
    return [*((layer, False) for layer in base.local_encoder.layers),
            *((layer, True) for layer in base.global_transformer.layers),
            *((layer, False) for layer in base.local_decoder.layers)]


def recorded(model, ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(layer, name) -> its FFN input ``x``, down projection input ``z`` and output ``hidden``; and the patch ids
    of the bytes (tokens,), from one forward pass over ``ids`` (one sentence)."""
    seen = {}
    record = lambda key: lambda module, inputs: seen.__setitem__(key, inputs[0])
    hooks = [model.base_model.local_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__("patch_ids", kwargs["patch_ids"][0]), with_kwargs=True)]
    for index, (layer, _) in enumerate(blt_layers(model)):
        hooks += [layer.mlp.register_forward_pre_hook(record((index, "x"))),
                  layer.mlp.down_proj.register_forward_pre_hook(record((index, "z"))),
                  layer.register_forward_hook(lambda module, inputs, output, index=index: seen.__setitem__(
                      (index, "hidden"), output[0] if isinstance(output, tuple) else output))]
    hooked_pass(model, ids, hooks)
    return seen, seen.pop("patch_ids")


def recomputed_patches(model, tokenizer, sentences: list[str]) -> dict[str, dict[str, list[np.ndarray]]]:
    """kind -> pooling -> per layer (sentences, width), each sentence run alone: a = silu(gate x) (the activation
    every part's config names, checked), z = a · up x (checked to be what the down projection receives),
    NAS = 1[a > 0], NAV = |z|, hidden = the layer's output; over patches, the value of a byte's patch at each
    byte."""
    config = model.config
    assert {part.hidden_act for part in (config.encoder_config, config.global_config, config.decoder_config)} \
        == {"silu"}
    layers = blt_layers(model)
    states = {kind: {pooling: [[] for _ in layers] for pooling in POOLS} for kind in KINDS}
    for sentence in sentences:
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        seen, patch_of = recorded(model, ids)
        for index, (layer, patched) in enumerate(layers):
            x, mlp = seen[index, "x"], layer.mlp
            with torch.no_grad():
                a = torch.nn.functional.silu(mlp.gate_proj(x))
                z = a * mlp.up_proj(x)
            torch.testing.assert_close(z, seen[index, "z"], atol=1e-5, rtol=1e-4)
            for kind, value in (("nas", (a > 0).float()), ("nav", z.abs()), ("hidden", seen[index, "hidden"])):
                per_byte = value[:, patch_of] if patched else value   # (1, bytes, width)
                assert per_byte.shape[1] == ids.shape[1]
                for pooling, pooled in pool_by_hand(per_byte, torch.ones(ids.shape)).items():
                    states[kind][pooling][index].append(pooled[0])
    return {kind: {pooling: [np.stack(rows) for rows in by_layer] for pooling, by_layer in by.items()}
            for kind, by in states.items()}
