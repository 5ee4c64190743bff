"""Stage one's forward pass: sentences in, pooled NAS / NAV / hidden states per layer out.

Sentences are tokenized once, sorted by length into batches (little padding), right-padded (so that under
causal attention real tokens never see padding), and run through the base model only (no LM head), with
the probes pooling on the device.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.errors import Interrupted, NeuronXAError, check_creatable, check_whole
from neuronxa.stage_one import models
from neuronxa.stage_one.models import ModelSpec, resolve_device, resolve_dtype
from neuronxa.stage_one.pooling import POOLINGS, pooling_weights, real_token_mask
from neuronxa.stage_one.probes import KINDS, SITE_NAMES, PoolingProbe, architecture_of, module_paths
from neuronxa.stage_one.store import StateStore


class PooledStates(dict):
    """``states[kind][pooling]``: float32 array (layers, sentences, width); with token counts per sentence."""

    def __init__(self, arrays: dict, n_tokens: np.ndarray, truncated: np.ndarray) -> None:
        super().__init__(arrays)
        self.n_tokens = n_tokens
        self.truncated = truncated  # per sentence: cut at max_length

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


def check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise NeuronXAError(f"extract.max_length must be at least 2 tokens, not {max_length}")


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
    width = max(len(ids) for ids in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, sentence in enumerate(token_ids):
        ids[row, : len(sentence)] = torch.tensor(sentence)
        mask[row, : len(sentence)] = 1
    return ids.to(device), mask.to(device)


def model_device(model) -> torch.device:
    """Where the model's inputs go (the embedding's device when the model is spread over devices)."""
    return model.get_input_embeddings().weight.device


def pooled_states(
    model,
    tokenizer,
    sentences: list[str],
    poolings: tuple[str, ...] = POOLINGS,
    batch_size: int = 16,
    max_length: int = 512,
    kinds: tuple[str, ...] = KINDS,
    skip_bos: bool = False,
    progress: bool = False,
    layers: int | None = None,
    batch_tokens: int | None = None,
) -> PooledStates:
    """Pooled neuron states of ``sentences``: ``states[kind][pooling]`` of shape (layers, sentences, width).

    ``kind`` is ``nas`` (share of tokens with a > 0), ``nav`` (|z|) or ``hidden`` (decoder layer output);
    layer 0 is the first decoder layer; ``layers`` keeps the first N and stops the forward pass there;
    ``batch_tokens`` caps a batch's padded tokens besides its ``batch_size`` sentences (see ``length_batches``).
    """
    token_ids, cut = tokenize(tokenizer, sentences, max_length)
    arrays: dict[str, dict[str, np.ndarray]] = {}

    def weights(ids: torch.Tensor, attention: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return pooling_weights(real_token_mask(attention, ids, tokenizer.bos_token_id, skip_bos), poolings)

    for batch, _, pooled_by_kind in probed_batches(model, tokenizer, token_ids, kinds, weights, batch_size, progress,
                                                   layers, batch_tokens):
        for kind, pooled in pooled_by_kind.items():
            pooled = pooled.float().cpu().numpy()  # (layers, poolings, batch, width)
            for p, pooling in enumerate(poolings):
                if pooling not in arrays.setdefault(kind, {}):
                    arrays[kind][pooling] = np.zeros((pooled.shape[0], len(sentences), pooled.shape[3]), np.float32)
                arrays[kind][pooling][:, batch, :] = pooled[:, p]
    n_tokens = np.array([len(ids) for ids in token_ids], dtype=np.int32)
    return PooledStates(arrays, n_tokens, cut)


def probed_batches(model, tokenizer, token_ids: list[list[int]], kinds: tuple[str, ...], weights, batch_size: int,
                   progress: bool, layers: int | None = None, batch_tokens: int | None = None):
    """Run length-sorted, right-padded batches through the base model with the probes attached; yield each
    batch's indices, its pooling weights and the pooled states (``kind -> (layers, poolings, batch, width)``).
    ``weights(ids, attention, batch)`` gives the (poolings, batch, tokens) weights of a batch."""
    if batch_size < 1:
        raise NeuronXAError(f"batch_size must be at least 1, not {batch_size}")
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
    prompt: str | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
    layers: int | None = None,
) -> tuple[np.ndarray, int, int]:
    """How many tokens each neuron is active on (a > 0): an int64 array (layers, neurons); the number of
    tokens counted; and the number of texts cut at ``max_length``.

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
    for _, counted, pooled in probed_batches(model, tokenizer, token_ids, ("nas",), weights, batch_size, progress,
                                             layers):
        counts = pooled["nas"][:, 0].sum(dim=1).round().to(torch.int64).cpu().numpy()
        active = counts if active is None else active + counts
        total += int(counted.sum().item())
    return active, total, int(cut.sum())


def check_options(spec: ModelSpec, max_length: int, batch_size: int, group_units: int, layers: int | None,
                  batch_tokens: int | None = None) -> None:
    """Stage one's options against each other and the model's config, before any cache look-up or weights load
    (an unsupported architecture fails here too)."""
    check_max_length(max_length)
    check_whole(batch_size, "extract.batch_size", 1)
    check_whole(group_units, "extract.group_units", 1)
    if batch_tokens is not None:
        check_whole(batch_tokens, "extract.batch_tokens", 1, " (null: batches of extract.batch_size sentences)")
    config = models.model_config(spec)       # read once: a hub model's config is a network round trip
    architecture_of(config["model_type"])
    if layers is not None:
        available = models.n_layers(config)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1 or \
                (available is not None and layers > available):
            raise NeuronXAError(f"extract.layers must be between 1 and the model's {available or 'number of'} layers "
                                f"(or null for all), not {layers!r}")


def forward_key(identity: dict, corpus_name: str, max_units: int | None, max_length: int, dtype: str,
                skip_bos: bool) -> dict:
    """Everything that changes the forward pass's pooled states, and nothing else."""
    return {**identity, "corpus": corpus_name, "max_units": max_units, "max_length": max_length,
            "dtype": dtype, "skip_bos": skip_bos, "sites": SITE_NAMES}


def language_groups(languages: list[str], units: dict[str, int], group_units: int) -> list[list[str]]:
    """Consecutive languages packed into groups of at most ``group_units`` units (a larger language alone)."""
    groups: list[list[str]] = []
    size = 0
    for language in languages:
        if groups and size + units[language] <= group_units:
            groups[-1].append(language)
            size += units[language]
        else:
            groups.append([language])
            size = units[language]
    return groups


def split_states(states: PooledStates, sizes: list[int]) -> list[PooledStates]:
    """Pooled states of concatenated sentences, split back into consecutive parts of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [PooledStates({kind: {p: a[:, lo:hi] for p, a in by.items()} for kind, by in states.items()},
                         states.n_tokens[lo:hi], states.truncated[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]


@dataclass
class Loader:
    """How stage one gets its model: loaded on first need (``loaded``: a ``(model, tokenizer)`` already in memory)."""
    spec: ModelSpec
    dtype: str
    device: str
    device_map: str | dict | None = None
    offload_folder: str | None = None
    loaded: tuple | None = None

    def __call__(self) -> tuple:
        if self.loaded is None:
            self.loaded = models.load(self.spec, dtype=self.dtype, device=self.device, device_map=self.device_map,
                                      offload_folder=self.offload_folder)
        return self.loaded


def extract_corpus(corpus: ParallelCorpus, spec: ModelSpec, cache_dir: str | Path, max_units: int | None = None,
                   max_length: int = 512, batch_size: int = 16, dtype: str = "auto", device: str = "auto",
                   device_map: str | dict | None = None, skip_bos: bool = False, group_units: int = 256,
                   layers: int | None = None, loaded: tuple | None = None, offload_folder: str | None = None,
                   batch_tokens: int | None = None) -> tuple[StateStore, pd.DataFrame]:
    """Stage one: cache pooled states for every language of ``corpus``, reusing complete entries.

    The corpus's languages are packed into groups of up to ``group_units`` units whose sentences are batched
    together by length (far less padding than one language at a time). The plan depends on the corpus, never on
    what the cache already holds: a group with any language missing runs whole, so a resumed run computes the
    same batches, and gives the same bits, as an uninterrupted one. A group's entries are written by a
    background thread while the next group runs through the model, and memory is bounded by two groups, not
    the corpus. ``layers`` keeps the first N decoder layers and stops each forward pass there. The model is
    loaded only when some language is missing (``loaded``: a ``(model, tokenizer)`` of ``spec`` already in
    memory); languages are computed under per-language locks, so concurrent jobs sharing the cache compute each
    once. Returns the store and a report row per language (a group's seconds, forward pass and write, shared out
    by tokens)."""
    check_options(spec, max_length, batch_size, group_units, layers, batch_tokens)
    loader = Loader(spec, dtype, resolve_device(device), device_map, offload_folder, loaded)
    compute = partial(state_writes, batch_size=batch_size, max_length=max_length, skip_bos=skip_bos, layers=layers,
                      batch_tokens=batch_tokens)
    store = stage_one_store(cache_dir, spec, corpus, max_units, max_length, loader, skip_bos, layers)
    return compute_missing(corpus, store, group_units, loader, compute)


def extract_counts(corpus: ParallelCorpus, spec: ModelSpec, cache_dir: str | Path, prompt: str = "",
                   max_units: int | None = None, max_length: int = 512, batch_size: int = 16, dtype: str = "auto",
                   device: str = "auto", device_map: str | dict | None = None, layers: int | None = None,
                   loaded: tuple | None = None, offload_folder: str | None = None) -> tuple[StateStore, pd.DataFrame]:
    """Stage one for language neurons: cache each neuron's count of active tokens per language (``active``,
    layers × neurons, and the tokens counted), one language at a time; with ``prompt``, each unit is read after
    it and only the unit's tokens count. Reuse, locks and the report as ``extract_corpus``."""
    check_options(spec, max_length, batch_size, 1, layers)
    loader = Loader(spec, dtype, resolve_device(device), device_map, offload_folder, loaded)
    store = stage_one_store(cache_dir, spec, corpus, max_units, max_length, loader, False, layers,
                            {"product": "activation_counts", "prompt": prompt})
    compute = partial(count_writes, prompt=prompt, batch_size=batch_size, max_length=max_length, layers=layers)
    return compute_missing(corpus, store, 1, loader, compute)


def stage_one_store(cache_dir: str | Path, spec: ModelSpec, corpus: ParallelCorpus, max_units: int | None,
                    max_length: int, loader: Loader, skip_bos: bool, layers: int | None,
                    product: dict | None = None) -> StateStore:
    """The store keyed by what changes the forward pass (and the product, for activation counts)."""
    torch_dtype = str(resolve_dtype(loader.dtype, loader.device)).removeprefix("torch.")
    key = forward_key(models.identity(spec), corpus.name, max_units, max_length, torch_dtype, skip_bos)
    key.update({"layers": layers} if layers is not None else {})
    store = StateStore(cache_dir, {**key, **(product or {})})
    if store.local:
        check_creatable(store.root, "cache.dir")
    return store


def compute_missing(corpus: ParallelCorpus, store: StateStore, group_units: int, loader: Loader,
                    compute) -> tuple[StateStore, pd.DataFrame]:
    """Run ``compute(store, corpus, group, model_and_tokenizer)`` (which returns one cache write per language)
    for every planned group with a language the cache lacks, under the group's locks, writing in the background;
    then the report."""
    status = {language: store.status(language, corpus.fingerprint(language)) for language in corpus.languages}
    pending = [language for language in corpus.languages if status[language] != "complete"]
    units = {language: len(corpus.units[language]) for language in corpus.languages}
    bar = tqdm(total=len(pending), desc=f"stage one: {loader.spec.name}", unit="language", disable=not pending)
    writer = GroupWriter(store, bar)
    try:
        with writer:
            for group in language_groups(corpus.languages, units, group_units):  # the plan ignores the cache
                if set(group) & set(pending):
                    run_group(corpus, store, group, pending, status, loader, compute, writer, bar)
    except KeyboardInterrupt:
        bar.close()
        done = sum(store.status(language, corpus.fingerprint(language)) == "complete" for language in corpus.languages)
        raise Interrupted(f"interrupted: {done} of {len(corpus.languages)} languages cached in {store.url()}; "
                          "run the same command again to resume") from None
    bar.close()
    return store, report(corpus, store, status, writer.seconds)


def run_group(corpus: ParallelCorpus, store: StateStore, group: list[str], pending: list[str], status: dict,
              loader: Loader, compute, writer: GroupWriter, bar) -> None:
    """One planned group: lock it, compute what is still missing (another job may have written it meanwhile),
    and hand the writes to the writer."""
    bar.set_postfix_str(", ".join(group) if len(group) < 4 else f"{group[0]} … {group[-1]}")
    started = time.perf_counter()
    held = writer.lock(group)
    try:
        status.update({language: store.status(language, corpus.fingerprint(language)) for language in group})
        todo = [language for language in group if status[language] != "complete"]  # under the lock
        writes = compute(store, corpus, group, loader()) if todo else []
        writes = [write for language, write in zip(group, writes) if language in todo]
    except BaseException:
        held.close()
        raise
    writer.submit(writes, held, [language for language in group if language in pending],
                  time.perf_counter() - started)


class GroupWriter:
    """Writes a group's cache entries on a background thread while the next group computes, holding the group's
    per-language locks until its entries are written; accounts each language's seconds (by its tokens)."""

    def __init__(self, store: StateStore, bar) -> None:
        self.store, self.bar = store, bar
        self.locks = store.lock_dir()
        self.locks.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.in_flight: list[tuple[Future, ExitStack, list[str], float]] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuronxa-write")

    def lock(self, group: list[str]) -> ExitStack:
        """The group's locks, taken in one global order (overlapping groups cannot deadlock)."""
        held = ExitStack()
        try:
            for language in sorted(group):
                held.enter_context(FileLock(str(self.locks / f"{self.store.digest[:16]}-{language}.lock")))
        except BaseException:
            held.close()
            raise
        return held

    def submit(self, writes: list, held: ExitStack, languages: list[str], compute_seconds: float) -> None:
        """Start writing a group (after the previous group's writes are done)."""
        self.settle()
        self.in_flight.append((self.pool.submit(timed_writes, writes), held, languages, compute_seconds))

    def settle(self) -> None:
        """Wait for the group being written, release its locks, and account its seconds."""
        if not self.in_flight:
            return
        future, held, group, compute_seconds = self.in_flight.pop()
        with held:
            elapsed = compute_seconds + future.result()
        tokens = {language: self.store.n_tokens_total(language) for language in group}
        for language in group:
            self.seconds[language] = elapsed * tokens[language] / max(sum(tokens.values()), 1)
        self.bar.update(len(group))

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """On success, the last group is written; on an error, the write in progress finishes, then unlocks."""
        try:
            if kind is None:
                self.settle()
        finally:
            for future, held, _, _ in self.in_flight:
                future.exception()
                held.close()
            self.in_flight.clear()
            self.pool.shutdown(wait=True)


STATUS_WORDS = {"complete": "reused", "missing": "written", "stale": "rewritten (corpus changed)",
                "corrupt": "rewritten (corrupt entry)"}


def report(corpus: ParallelCorpus, store: StateStore, status: dict[str, str],
           seconds: dict[str, float]) -> pd.DataFrame:
    """A row per language: source code, units, tokens, truncated units, what was done, seconds."""
    rows = []
    for language in corpus.languages:
        meta = store.metadata(language)
        rows.append({"language": language, "source": meta.get("source_code"), "units": len(meta["ids"]),
                     "tokens": store.n_tokens_total(language), "truncated": meta["n_truncated"],
                     "status": STATUS_WORDS[status[language]], "seconds": round(seconds.get(language, 0.0), 2)})
    return pd.DataFrame(rows)


def timed_writes(writes: list) -> float:
    """Run the cache writes of one group; return their seconds."""
    started = time.perf_counter()
    for write in writes:
        write()
    return time.perf_counter() - started


def metadata(corpus: ParallelCorpus, language: str, model) -> dict:
    """What an entry records beside its arrays: the source's language code and the probe sites."""
    sites = {kind: f"{SITE_NAMES[kind]} = {path}" for kind, path in module_paths(model).items()}
    return {"source_code": corpus.source_codes.get(language, language), "sites": sites}


def state_writes(store: StateStore, corpus: ParallelCorpus, languages: list[str], loaded, batch_size: int,
                 max_length: int, skip_bos: bool, layers: int | None = None, batch_tokens: int | None = None) -> list:
    """Pooled states of some languages (one batched pass over all their units); one cache write per language,
    to run when convenient."""
    texts = [text for language in languages for text in corpus.texts(language)]
    states = pooled_states(*loaded, texts, batch_size=batch_size, max_length=max_length, skip_bos=skip_bos,
                           progress=True, layers=layers, batch_tokens=batch_tokens)
    parts = split_states(states, [len(corpus.units[language]) for language in languages])
    return [partial(store.write, language, part, corpus.ids(language), corpus.fingerprint(language),
                    n_tokens=part.n_tokens, n_truncated=part.n_truncated, **metadata(corpus, language, loaded[0]))
            for language, part in zip(languages, parts)]


def count_writes(store: StateStore, corpus: ParallelCorpus, languages: list[str], loaded, prompt: str,
                 batch_size: int, max_length: int, layers: int | None = None) -> list:
    """Activation counts of some languages, one at a time; one cache write per language."""
    writes = []
    for language in languages:
        active, tokens, n_truncated = activation_counts(*loaded, corpus.texts(language), prompt or None, batch_size,
                                                        max_length, progress=True, layers=layers)
        writes.append(partial(store.write_arrays, language, {"active": active}, corpus.ids(language),
                              corpus.fingerprint(language), n_tokens_total=tokens, n_truncated=n_truncated,
                              **metadata(corpus, language, loaded[0])))
    return writes
