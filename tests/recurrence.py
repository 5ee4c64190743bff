"""HRM-Text, whose decoder layers run several times in one forward pass, recomputed run by run: hooks record each
layer's FFN input x, its down projection's input and the layer's output on every call, each call numbered by the
model's own cache slot (the ``cycle_offset`` its stack passes the layer, plus the layer's index in its stack); a and
z are computed from the weights, written here."""

import numpy as np
import torch

from helpers import POOLS, hooked_pass, pool_by_hand

KINDS = ("nas", "nav", "hidden")


def stack_layers(model) -> list:
    """The decoder layers of both stacks (L, then H)."""
    return [*model.base_model.L_module.layers, *model.base_model.H_module.layers]


def slot_hooks(model, on_start) -> list:
    """Forward pre-hooks calling ``on_start(layer, slot)`` as each layer's call begins, with the model's own slot
    number for it. Returns the handles."""
    return [layer.register_forward_pre_hook(
        lambda module, args, kwargs: on_start(module, kwargs["cycle_offset"] + module.self_attn.layer_idx),
        with_kwargs=True) for layer in stack_layers(model)]


def recorded_runs(model, ids: torch.Tensor) -> dict[int, dict]:
    """slot -> the layer that ran it, its FFN input ``x``, its down projection's input ``z`` and its output
    ``hidden``, from one forward pass over ``ids`` (one sentence)."""
    seen, current = {}, []

    def start(layer, slot: int) -> None:
        assert slot not in seen, f"slot {slot} ran twice"
        seen[slot] = {"layer": layer}
        current[:] = [slot]

    record = lambda name: lambda module, inputs: seen[current[0]].__setitem__(name, inputs[0])
    hooks = slot_hooks(model, start)
    for layer in stack_layers(model):
        hooks += [layer.mlp.register_forward_pre_hook(record("x")),
                  layer.mlp.down_proj.register_forward_pre_hook(record("z")),
                  layer.register_forward_hook(lambda module, inputs, output: seen[current[0]].__setitem__(
                      "hidden", output))]
    hooked_pass(model, ids, hooks)
    return seen


def recomputed_runs(model, tokenizer, sentences: list[str]) -> dict[str, dict[str, list[np.ndarray]]]:
    """kind -> pooling -> per slot (sentences, width), each sentence run alone: a = act(gate x), z = a · up x (z
    checked to be what the down projection receives), NAS = 1[a > 0], NAV = |z|, hidden = the layer's output."""
    from transformers.activations import ACT2FN

    act, slots = ACT2FN[model.config.hidden_act], model.config.num_hidden_layers
    states = {kind: {pooling: [[] for _ in range(slots)] for pooling in POOLS} for kind in KINDS}
    for sentence in sentences:
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        seen = recorded_runs(model, ids)
        assert sorted(seen) == list(range(slots))
        for slot, run in seen.items():
            mlp = run["layer"].mlp
            with torch.no_grad():
                a = act(mlp.gate_proj(run["x"]))
                z = a * mlp.up_proj(run["x"])
            torch.testing.assert_close(z, run["z"], atol=1e-5, rtol=1e-4)
            for kind, value in (("nas", (a > 0).float()), ("nav", z.abs()), ("hidden", run["hidden"])):
                for pooling, pooled in pool_by_hand(value, torch.ones(ids.shape)).items():
                    states[kind][pooling][slot].append(pooled[0])
    return {kind: {pooling: [np.stack(rows) for rows in by_slot] for pooling, by_slot in by.items()}
            for kind, by in states.items()}
