"""Stage one's forward pass: sentences in, pooled NAS / NAV / hidden states (or activation counts) per layer out.

Sentences are tokenized once, sorted by length into batches (little padding), right-padded (so that under
causal attention real tokens never see padding), and run through the base model only (no LM head), with
the probes pooling on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from neuronxa.errors import NeuronXAError, check_whole
from neuronxa.stage_one.pooling import POOLINGS, pooling_weights, real_token_mask
from neuronxa.stage_one.probes import PoolingProbe, kinds_of

Weights = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


class PooledStates(dict):
    """``states[kind][pooling]``: float32 array (layers, sentences, width), or a list of (sentences, width of
    the layer) where widths differ (mixture-of-experts models); with token counts per sentence."""

    def __init__(self, arrays: dict, n_tokens: np.ndarray, truncated: np.ndarray) -> None:
        super().__init__(arrays)
        self.n_tokens = n_tokens
        self.truncated = truncated  # per sentence: cut at max_length

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


def check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise NeuronXAError(f"max_length must be at least 2 tokens, not {max_length}")


def tokenize(tokenizer, sentences: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per sentence (with the tokenizer's special tokens), cut at ``max_length``, and for each sentence
    whether it was cut."""
    check_max_length(max_length)
    encoded = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    return [ids[:max_length] for ids in encoded], np.array([len(ids) > max_length for ids in encoded], dtype=bool)


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so memory peaks at the start): at most
    ``batch_size`` sentences, and with ``batch_tokens`` at most that many padded tokens (sentences × the longest),
    so that batches of short sentences hold more of them (a sentence longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if batch_tokens is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and (len(current) + 1) * lengths[current[0]] <= batch_tokens:
            current.append(index)
        else:
            batches.append([index])
    return batches


def padded(token_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask for one batch."""
    ids = pad_sequence([torch.tensor(sentence, dtype=torch.long) for sentence in token_ids], batch_first=True,
                       padding_value=pad_id)
    mask = pad_sequence([torch.ones(len(sentence), dtype=torch.long) for sentence in token_ids], batch_first=True)
    return ids.to(device), mask.to(device)


def model_device(model) -> torch.device:
    """Where the model's inputs go (the embedding's device when the model is spread over devices)."""
    return model.get_input_embeddings().weight.device


def pooled_states(
    model,
    tokenizer,
    sentences: list[str],
    *,
    poolings: tuple[str, ...] = POOLINGS,
    batch_size: int = 16,
    max_length: int = 512,
    kinds: tuple[str, ...] | None = None,
    skip_bos: bool = False,
    progress: bool = False,
    layers: int | None = None,
    batch_tokens: int | None = None,
) -> PooledStates:
    """Pooled neuron states of ``sentences``: ``states[kind][pooling]`` of shape (layers, sentences, width).

    ``kind`` is ``nas`` (share of tokens with a > 0), ``nav`` (|z|), ``hidden`` (decoder layer output) or, for
    mixture-of-experts models, ``routing`` (routing weights over the experts); ``kinds`` None: all the model has;
    layer 0 is the first decoder layer; ``layers`` keeps the first N and stops the forward pass there;
    ``batch_tokens`` caps a batch's padded tokens besides its ``batch_size`` sentences (see ``length_batches``).
    """
    token_ids, cut = tokenize(tokenizer, sentences, max_length)
    layered: dict[str, dict[str, list[np.ndarray]]] = {}

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return pooling_weights(real_token_mask(attention, ids, tokenizer.bos_token_id, skip_bos), poolings)

    for batch, _, pooled_by_kind in probed_batches(model, tokenizer, token_ids, kinds=kinds or kinds_of(model),
                                                   weights=weights, batch_size=batch_size, progress=progress,
                                                   layers=layers, batch_tokens=batch_tokens):
        for kind, pooled in pooled_by_kind.items():
            _fill(layered.setdefault(kind, {}), pooled, batch, poolings=poolings, n_sentences=len(sentences))
    arrays = {kind: {pooling: np.stack(per_layer) if len({a.shape for a in per_layer}) == 1 else per_layer
                     for pooling, per_layer in by_pooling.items()} for kind, by_pooling in layered.items()}
    n_tokens = np.array([len(ids) for ids in token_ids], dtype=np.int32)
    return PooledStates(arrays, n_tokens, cut)


def _fill(by_pooling: dict[str, list[np.ndarray]], pooled: torch.Tensor | list[torch.Tensor], batch: list[int], *,
          poolings: tuple[str, ...], n_sentences: int) -> None:
    """Put one batch's pooled states of one kind (per layer: poolings, batch, width) into per-layer arrays."""
    pooled = pooled.float().cpu().numpy() if isinstance(pooled, torch.Tensor) else \
        [layer.float().cpu().numpy() for layer in pooled]
    for layer, states in enumerate(pooled):
        for p, pooling in enumerate(poolings):
            per_layer = by_pooling.setdefault(pooling, [])
            if layer == len(per_layer):
                per_layer.append(np.zeros((n_sentences, states.shape[2]), np.float32))
            per_layer[layer][batch, :] = states[p]


def probed_batches(model, tokenizer, token_ids: list[list[int]], *, kinds: tuple[str, ...], weights: Weights,
                   batch_size: int, progress: bool, layers: int | None = None,
                   batch_tokens: int | None = None) -> Iterator[tuple[list[int], torch.Tensor, dict]]:
    """Run length-sorted, right-padded batches through the base model with the probes attached; yield each
    batch's indices, its pooling weights and the pooled states (``kind -> (layers, poolings, batch, width)``).
    ``weights(ids, attention, batch)`` gives the (poolings, batch, tokens) weights of a batch."""
    check_whole(batch_size, "batch_size", 1)
    probe = PoolingProbe(model, kinds, layers)
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = length_batches([len(ids) for ids in token_ids], batch_size, batch_tokens)
    with torch.inference_mode(), probe.attached():
        for batch in tqdm(batches, desc="batches", unit="batch", disable=not progress, leave=False, position=1):
            ids, attention = padded([token_ids[i] for i in batch], pad_id, device)
            batch_weights = weights(ids, attention, batch)
            probe.reset(batch_weights)
            probe.run(model.base_model, input_ids=ids, attention_mask=attention, use_cache=False)
            yield batch, batch_weights, probe.collect()


def activation_counts(
    model,
    tokenizer,
    texts: list[str],
    *,
    prompt: str | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
    layers: int | None = None,
) -> tuple[np.ndarray, int, int]:
    """How many tokens each neuron is active on (a > 0): an int64 array (layers, neurons); the number of
    tokens counted; and the number of texts cut at ``max_length``. Where layers differ in width (mixture of
    experts), the narrower layers' rows end in zeros (neurons that do not exist are never active).

    With ``prompt``, each text is read after the prompt (``prompt + text``) and only the text's tokens count.
    """
    full = [(prompt or "") + text for text in texts]
    token_ids, cut = tokenize(tokenizer, full, max_length)
    skip = [0] * len(texts)
    if prompt:
        skip = [len(ids) for ids in tokenize(tokenizer, [prompt] * len(texts), max_length)[0]]

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        start = torch.tensor([skip[i] for i in batch], device=ids.device)
        return pooling_weights(real_token_mask(attention, ids, None, False, count_from=start), ("sum",))

    active, total = None, 0
    for _, counted, pooled in probed_batches(model, tokenizer, token_ids, kinds=("nas",), weights=weights,
                                             batch_size=batch_size, progress=progress, layers=layers):
        counts = padded_layers([layer[0].sum(dim=0).round().to(torch.int64).cpu().numpy() for layer in pooled["nas"]])
        active = counts if active is None else active + counts
        total += int(counted.sum().item())
    return active, total, int(cut.sum())


def padded_layers(rows: list[np.ndarray]) -> np.ndarray:
    """Per-layer arrays (..., width of the layer) stacked into (layers, ..., widest), zero-padded."""
    widest = max(row.shape[-1] for row in rows)
    return np.stack([np.pad(row, [(0, 0)] * (row.ndim - 1) + [(0, widest - row.shape[-1])]) for row in rows])


def split_states(states: PooledStates, sizes: list[int]) -> list[PooledStates]:
    """Pooled states of concatenated sentences, split back into consecutive parts of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    rows = lambda a, lo, hi: [layer[lo:hi] for layer in a] if isinstance(a, list) else a[:, lo:hi]
    return [PooledStates({kind: {p: rows(a, lo, hi) for p, a in by.items()} for kind, by in states.items()},
                         states.n_tokens[lo:hi], states.truncated[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]
