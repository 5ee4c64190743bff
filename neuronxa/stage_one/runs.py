"""Decoder layers in several lists, or that run several times in one forward pass: each run of a layer is one
probed layer. HRM-Text's hierarchical recurrence runs its two stacks in cycles, numbered as the model numbers its
runs (its cache slots), ``num_hidden_layers`` of them; BLT runs its local encoder's layers, its global
transformer's, then its local decoder's, each once (patches.py).

What structure cannot tell (which lists of layers run, in which order, how many times) is a table entry per model
type, ``SCHEDULES``: the config -> per probed layer, the layer that runs it (its list's path under the base model,
its index in the list), in the order they run. ``Run`` maps a layer module's k-th call in a forward pass to its
probed layer, for the probes and the edit hooks alike. Every other model runs each decoder layer once: probed layer
= the layer's index, with no counting (a layer that runs twice stores twice and is refused in one line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.structure import model_type, submodule

Schedule = tuple[tuple[str, int], ...]


def _hrm_text(config) -> Schedule:
    """HRM-Text: per high cycle h, the L stack ``L_cycles`` times (l = 0, 1, ...), then the H stack once, each
    stack's layers in order; run r of this order is the model's cache slot r = (h·(L_cycles + 1) + l)·n + layer,
    n = ``num_layers_per_stack`` (l = L_cycles for the H stack)."""
    cycle = ["L_module.layers"] * config.L_cycles + ["H_module.layers"]
    return tuple((stack, layer) for _ in range(config.H_cycles) for stack in cycle
                 for layer in range(config.num_layers_per_stack))


def _blt(config) -> Schedule:
    """BLT: the local encoder's layers (over bytes), the global transformer's (over patches), the local
    decoder's (over bytes), in the order they run; its patcher's layers only cut the patches (not probed)."""
    parts = (("local_encoder.layers", config.encoder_config), ("global_transformer.layers", config.global_config),
             ("local_decoder.layers", config.decoder_config))
    return tuple((path, layer) for path, part in parts for layer in range(part.num_hidden_layers))


SCHEDULES: dict[str, Callable[..., Schedule]] = {"hrm_text": _hrm_text, "blt": _blt}


def schedule(model: nn.Module) -> Schedule | None:
    """Per probed layer, the layer that runs it, in the order they run; None where each decoder layer runs once."""
    rule = SCHEDULES.get(model_type(model))
    return None if rule is None else rule(model.config.get_text_config())


def repeats(model: nn.Module) -> bool:
    """Whether some decoder layer runs several times in one forward pass (HRM-Text's; BLT's run once each)."""
    order = schedule(model)
    return order is not None and len(set(order)) < len(order)


def probed_layers(model: nn.Module, layers: Sequence[nn.Module]) -> list[nn.Module]:
    """Per probed layer, the layer module that runs it: the decoder ``layers`` themselves unless scheduled."""
    order = schedule(model)
    return list(layers) if order is None else [submodule(model.base_model, path)[index] for path, index in order]


def layer_path(model: nn.Module, layers: str) -> str:
    """The module path of probed layer ``{layer}``, for the cache metadata: ``layers.{layer}``; where layers run
    several times, the scheduled lists' layer that runs it."""
    order = schedule(model)
    if order is None:
        return f"{layers}.{{layer}}"
    return f"({'|'.join(dict.fromkeys(path for path, _ in order))}).{{the layer of run {{layer}}}}"


class Run:
    """The probed layer of a layer module's current call: its k-th call in a forward pass is ``slots[k]`` (one
    slot: always that one, nothing counted)."""

    def __init__(self, slots: tuple[int, ...]) -> None:
        self.slots = slots
        self.calls = 0

    def __call__(self) -> int:
        return self.slots[max(self.calls - 1, 0)]

    def start(self, module: nn.Module, inputs) -> None:
        """Forward pre-hook of the layer module: its next call begins."""
        if self.calls == len(self.slots):
            raise NeuronXAError(f"a decoder layer ran more than the {len(self.slots)} times its model type's "
                                f"schedule gives it (probed layers {', '.join(map(str, self.slots))}) in one "
                                "forward pass: its FFN states per run are not defined")
        self.calls += 1


def layer_runs(model: nn.Module, layers: Sequence[nn.Module]) -> list[tuple[nn.Module, Run]]:
    """Each layer module that runs, with its ``Run`` (the probed layers of its 1st, 2nd, ... call)."""
    if schedule(model) is None:
        return [(layer, Run((index,))) for index, layer in enumerate(layers)]
    runs: dict[int, tuple[nn.Module, list[int]]] = {}
    for slot, module in enumerate(probed_layers(model, layers)):
        runs.setdefault(id(module), (module, []))[1].append(slot)
    return [(module, Run(tuple(slots))) for module, slots in runs.values()]


def counting(model: nn.Module, runs: list[tuple[nn.Module, Run]]) -> list:
    """Hooks that count each layer module's calls, from 0 at the start of every forward pass of the base model;
    none where each layer runs once. Returns the hook handles."""
    if all(len(run.slots) == 1 for _, run in runs):
        return []

    def restart(module, inputs) -> None:
        for _, run in runs:
            run.calls = 0

    return [model.base_model.register_forward_pre_hook(restart),
            *(module.register_forward_pre_hook(run.start) for module, run in runs)]
