"""Stage one's forward pass: sentences in, pooled NAS / NAV / hidden states (or activation counts) per layer out.

Sentences are tokenized once, sorted by length into batches (little padding), right-padded (so that under
causal attention real tokens never see padding; left-padded with the id a model reads as padding where it reads
padding from the ids, ``positions.py``), and run through the base model only (no LM head), with
the probes pooling on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from neuronxa.errors import check_whole
from neuronxa.stage_one.options import check_max_length
from neuronxa.stage_one.pooling import POOLINGS, pooling_weights, real_token_mask
from neuronxa.stage_one.positions import check_no_padding_ids, padding, same_length
from neuronxa.stage_one.probes import PoolingProbe, kinds_of
from neuronxa.stage_one.store import FLOAT16_MAX

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


def tokenize(tokenizer, sentences: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per sentence (with the tokenizer's special tokens), cut at ``max_length``, and for each sentence
    whether it was cut."""
    check_max_length(max_length)
    encoded = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    return [ids[:max_length] for ids in encoded], np.array([len(ids) > max_length for ids in encoded], dtype=bool)


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None, *,
                   same_length: bool = False) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so memory peaks at the start): at most
    ``batch_size`` sentences, and with ``batch_tokens`` at most that many padded tokens (sentences × the longest),
    so that batches of short sentences hold more of them (a sentence longer than the budget goes alone); with
    ``same_length``, only sentences of one length (batches that need no padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size \
                and (batch_tokens is None or (len(current) + 1) * lengths[current[0]] <= batch_tokens) \
                and (not same_length or lengths[index] == lengths[current[0]]):
            current.append(index)
        else:
            batches.append([index])
    return batches


def padded(token_ids: list[list[int]], pad_id: int, device: torch.device,
           left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (or left-padded) ids and attention mask for one batch."""
    side = "left" if left else "right"
    ids = pad_sequence([torch.tensor(sentence, dtype=torch.long) for sentence in token_ids], batch_first=True,
                       padding_value=pad_id, padding_side=side)
    mask = pad_sequence([torch.ones(len(sentence), dtype=torch.long) for sentence in token_ids], batch_first=True,
                        padding_side=side)
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
    held = pooled_tensors(model, tokenizer, sentences, poolings=poolings, batch_size=batch_size,
                          max_length=max_length, kinds=kinds, skip_bos=skip_bos, progress=progress, layers=layers,
                          batch_tokens=batch_tokens)
    arrays = {kind: _per_pooling(tensors, poolings) for kind, tensors in held.items()}
    return PooledStates(arrays, held.n_tokens, held.truncated)


def _per_pooling(held: torch.Tensor | list[torch.Tensor], poolings: tuple[str, ...]) -> dict:
    """(poolings, layers, sentences, width) -> pooling -> (layers, sentences, width) float32 arrays (per layer
    where widths differ)."""
    if isinstance(held, torch.Tensor):
        host = held.cpu().numpy()
        return {pooling: host[p] for p, pooling in enumerate(poolings)}
    host = [layer.cpu().numpy() for layer in held]
    return {pooling: [layer[p] for layer in host] for p, pooling in enumerate(poolings)}


def pooled_tensors(model, tokenizer, sentences: list[str], *, poolings: tuple[str, ...] = POOLINGS,
                   batch_size: int = 16, max_length: int = 512, kinds: tuple[str, ...] | None = None,
                   skip_bos: bool = False, progress: bool = False, layers: int | None = None,
                   batch_tokens: int | None = None) -> PooledStates:
    """``pooled_states`` as torch tensors where they were pooled (on the host where the device lacks the memory),
    filled batch by batch without waiting for the device: ``states[kind]`` is (poolings, layers, sentences, width)
    float32, or per layer (poolings, sentences, width of the layer) where widths differ."""
    token_ids, cut = tokenize(tokenizer, sentences, max_length)
    held: dict[str, torch.Tensor | list[torch.Tensor]] = {}

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return pooling_weights(real_token_mask(attention, ids, tokenizer.bos_token_id, skip_bos), poolings)

    for batch, _, pooled_by_kind in probed_batches(model, tokenizer, token_ids, kinds=kinds or kinds_of(model),
                                                   weights=weights, batch_size=batch_size, progress=progress,
                                                   layers=layers, batch_tokens=batch_tokens):
        if not held:
            place = _holding_device(pooled_by_kind, len(sentences))
            held.update({kind: _allocated(pooled, len(sentences), place) for kind, pooled in pooled_by_kind.items()})
        for kind, pooled in pooled_by_kind.items():
            _fill(held[kind], pooled, batch)
    n_tokens = np.array([len(ids) for ids in token_ids], dtype=np.int32)
    return PooledStates(held, n_tokens, cut)


def _holding_device(pooled_by_kind: dict, n_sentences: int) -> torch.device:
    """Where a pass's pooled states are gathered: where they are pooled, unless a GPU lacks the memory for them
    (more than half of what is free), then the host."""
    first = next(iter(pooled_by_kind.values()))
    sample = first if isinstance(first, torch.Tensor) else first[0]   # (…, batch, width)
    if sample.device.type != "cuda":
        return sample.device if sample.device.type == "cpu" else torch.device("cpu")
    per_batch = sum(sum(t.numel() for t in (p if isinstance(p, list) else [p])) for p in pooled_by_kind.values())
    needed = 4 * per_batch * n_sentences / max(sample.shape[-2], 1)
    return sample.device if needed < torch.cuda.mem_get_info(sample.device)[0] / 2 else torch.device("cpu")


def _allocated(pooled: torch.Tensor | list[torch.Tensor], n_sentences: int, place: torch.device):
    """Room for every sentence's states of one kind, shaped like a batch's (layers, poolings, batch, width) but
    as (poolings, layers, sentences, width), or per layer (poolings, sentences, width)."""
    if isinstance(pooled, torch.Tensor):
        layers, poolings, _, width = pooled.shape
        return torch.empty((poolings, layers, n_sentences, width), dtype=torch.float32, device=place)
    return [torch.empty((layer.shape[0], n_sentences, layer.shape[2]), dtype=torch.float32, device=place)
            for layer in pooled]


def _fill(held: torch.Tensor | list[torch.Tensor], pooled: torch.Tensor | list[torch.Tensor],
          batch: list[int]) -> None:
    """Put one batch's pooled states of one kind into their sentences' rows (no wait for the device)."""
    if isinstance(held, torch.Tensor):
        rows = torch.tensor(batch, device=held.device)
        held.index_copy_(2, rows, pooled.transpose(0, 1).to(held.device, torch.float32))
        return
    rows = torch.tensor(batch, device=held[0].device)
    for target, layer in zip(held, pooled):
        target.index_copy_(1, rows, layer.to(target.device, torch.float32))


def probed_batches(model, tokenizer, token_ids: list[list[int]], *, kinds: tuple[str, ...], weights: Weights,
                   batch_size: int, progress: bool, layers: int | None = None,
                   batch_tokens: int | None = None) -> Iterator[tuple[list[int], torch.Tensor, dict]]:
    """Run length-sorted, padded batches through the base model with the probes attached; yield each
    batch's indices, its pooling weights and the pooled states (``kind -> (layers, poolings, batch, width)``).
    ``weights(ids, attention, batch)`` gives the (poolings, batch, tokens) weights of a batch."""
    check_whole(batch_size, "batch_size", 1)
    probe = PoolingProbe(model, kinds, layers)
    device = model_device(model)
    pad_id, left = padding(model, tokenizer)
    check_no_padding_ids(model, token_ids)
    batches = length_batches([len(ids) for ids in token_ids], batch_size, batch_tokens,
                             same_length=same_length(model))
    with torch.inference_mode(), probe.attached():
        for batch in tqdm(batches, desc="batches", unit="batch", disable=not progress, leave=False, position=1):
            ids, attention = padded([token_ids[i] for i in batch], pad_id, device, left)
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


def rows_as_stored(held: PooledStates, lo: int, hi: int, poolings: tuple[str, ...] = POOLINGS) -> dict:
    """Sentences lo:hi of ``pooled_tensors``' states as the store keeps them, ``kind -> pooling -> (layers,
    sentences, width)`` (per layer where widths differ): float16 where every value of the array fits, converted
    where the states are held and copied to the host once; float32 otherwise."""
    arrays: dict[str, dict] = {}
    for kind, tensors in held.items():
        arrays[kind] = {}
        for p, pooling in enumerate(poolings):
            parts = [tensors[p, :, lo:hi]] if isinstance(tensors, torch.Tensor) else [t[p, lo:hi] for t in tensors]
            dtype = torch.float16 if all(fits_half(part) for part in parts) else torch.float32
            host = [part.to(dtype).cpu().numpy() for part in parts]
            arrays[kind][pooling] = host[0] if isinstance(tensors, torch.Tensor) else host
    return arrays


def fits_half(states: torch.Tensor) -> bool:
    """Every value finite and within float16's range (the store's rule for keeping an array in half precision)."""
    if states.numel() == 0:
        return True
    low, high = torch.aminmax(states)
    return bool((low > -FLOAT16_MAX) & (high < FLOAT16_MAX))
