"""Models whose decoder layers run on more positions than the input has tokens, models that read padding from the
token ids rather than from the attention mask, and models whose states depend on padding: what structure cannot
tell, in three small tables.

- ProphetNet's decoder runs each layer on its main stream (the input's T tokens) followed by its ``ngram``
  predicting streams, concatenated along the token axis: (batch, (1 + ngram)·T, width). The states read are the
  main stream's, the first T positions (the stream its output's ``hidden_states`` holds).
- CPM-Ant prepends ``prompt_length`` prompt tokens to every input inside its forward pass: (batch,
  prompt_length + T, width). The states read are the input's, the last T positions. It takes padding from token
  id 0 as left padding (the last ``length`` positions of a row are real, ``length`` its count of non-zero ids).
- Reformer pads its input inside its forward pass to a multiple of its attention chunk length (the least common
  multiple of its LSH and local chunk lengths, where longer than the shorter one). The states read are the first T.
- BLT cuts its patches without reading the attention mask (patches.py), and Reformer's LSH attention sorts padding
  into its buckets with the real tokens: their batches hold sentences of one length, never padded.

Deactivation and the other interventions edit a on every position a layer runs on, as zeroing the neuron's column
of the down projection in the model would: ProphetNet's next-token logits come from its first predicting stream,
whose FFN neurons are the same neurons.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.structure import model_type


def _chunk_padded(config, tokens: int) -> int:
    """How many positions Reformer's layers run on for T tokens: T padded to a multiple of the least common
    multiple of its layers' chunk lengths, unless T is no longer than the shortest chunk."""
    chunks = {"lsh": config.lsh_attn_chunk_length, "local": config.local_attn_chunk_length}
    lengths = [chunks[kind] for kind in set(config.attn_layers)]
    multiple = math.lcm(*lengths)
    return tokens if tokens % multiple == 0 or tokens <= min(lengths) else tokens + multiple - tokens % multiple


# model type -> (config, T) -> (positions its layers run on for T input tokens, the input's among them)
INPUT_POSITIONS: dict[str, Callable[[object, int], tuple[int, slice]]] = {
    "prophetnet": lambda config, tokens: ((1 + config.ngram) * tokens, slice(0, tokens)),   # main stream first
    "cpmant": lambda config, tokens: (config.prompt_length + tokens, slice(config.prompt_length, None)),
    "reformer": lambda config, tokens: (_chunk_padded(config, tokens), slice(0, tokens)),
}
# model type -> the token id the model itself reads as padding, which must then be left padding
LEFT_PADDING = {"cpmant": 0}
# model types whose batches hold sentences of one length (padding would change their states)
SAME_LENGTH = {"blt", "reformer"}


def input_positions(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """For a model whose layers run on extra positions: the function taking a layer's (batch, positions, width)
    states of a batch of T tokens to the input's (batch, T, width); None for every other model."""
    positions = INPUT_POSITIONS.get(model_type(model))
    if positions is None:
        return None
    config = model.config

    def kept(states: torch.Tensor, tokens: int) -> torch.Tensor:
        expected, kept_slice = positions(config, tokens)
        if states.dim() != 3 or states.shape[1] != expected:
            raise NeuronXAError(f"a {model_type(model)} layer ran on states of shape {tuple(states.shape)}, not "
                                f"(batch, {expected}, width) for {tokens} tokens: not supported")
        return states[:, kept_slice]

    return kept


def padding(model: nn.Module, tokenizer) -> tuple[int, bool]:
    """The pad id of the model's batches and whether they are padded on the left: the id the model reads as
    padding where it reads padding from the ids, else the tokenizer's (0 if it has none), on the right."""
    kind = model_type(model)
    if kind in LEFT_PADDING:
        return LEFT_PADDING[kind], True
    return (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0), False


def check_no_padding_ids(model: nn.Module, token_ids: list[list[int]]) -> None:
    """One line when a sentence holds a real token whose id the model reads as padding."""
    pad_id = LEFT_PADDING.get(model_type(model))
    if pad_id is None:
        return
    holding = [index for index, ids in enumerate(token_ids) if pad_id in ids]
    if holding:
        raise NeuronXAError(f"sentence {holding[0]} holds token id {pad_id}, which {model_type(model)} reads as "
                            "padding, so its states would not be the sentence's: remove that token from the corpus")


def same_length(model: nn.Module) -> bool:
    """Whether the model's batches must hold sentences of one length (``SAME_LENGTH``): never padded."""
    return model_type(model) in SAME_LENGTH
