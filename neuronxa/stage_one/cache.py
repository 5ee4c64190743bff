"""Stage one's cache runner: plans language groups, computes what the cache lacks under per-language locks,
writes entries on a background thread, turns Ctrl-C into a line that says how to resume, and reports each
language."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.errors import Interrupted, check_creatable
from neuronxa.stage_one import models
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.options import SITE_NAMES, StageOneOptions
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_one.writer import GroupWriter

Compute = Callable[[ParallelCorpus, list[str], tuple], list]   # (corpus, languages, (model, tokenizer)) -> writes


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


@dataclass
class Loader:
    """How stage one gets its model: loaded on first need (``loaded``: a ``(model, tokenizer)`` already in memory)."""
    spec: ModelSpec
    options: StageOneOptions
    models_dir: str | Path | None = None
    loaded: tuple | None = None

    def __call__(self) -> tuple:
        from neuronxa.stage_one.sites import checked_sites, name_sites   # torch: only once a model is needed

        if self.loaded is None:
            options = self.options
            # the probe sites, found (or the named ones checked) on the model built without weights: fails fast
            checked_sites(models.meta_model(self.spec, models_dir=self.models_dir), options.sites)
            self.loaded = models.load(self.spec, dtype=options.dtype, device=models.resolve_device(options.device),
                                      device_map=options.device_map, offload_folder=options.offload_folder,
                                      models_dir=self.models_dir)
        if self.options.sites is not None:
            name_sites(self.loaded[0], self.options.sites)
        return self.loaded


def extract_corpus(corpus: ParallelCorpus, spec: ModelSpec, cache_dir: str | Path, *,
                   options: StageOneOptions = StageOneOptions(), models_dir: str | Path | None = None,
                   loaded: tuple | None = None) -> tuple[StateStore, pd.DataFrame]:
    """Stage one: cache pooled states for every language of ``corpus``, reusing complete entries.

    The corpus's languages are packed into groups of up to ``options.group_units`` units whose sentences are
    batched together by length (far less padding than one language at a time). The plan depends on the corpus,
    never on what the cache already holds: a group with any language missing runs whole, so a resumed run computes
    the same batches, and gives the same bits, as an uninterrupted one. A group's entries are written by a
    background thread while the next group runs through the model, and memory is bounded by two groups, not
    the corpus. The model is loaded only when some language is missing (``loaded``: a ``(model, tokenizer)`` of
    ``spec`` already in memory; ``models_dir``: where an embedded model is converted); languages are computed
    under per-language locks, so concurrent jobs sharing the cache compute each once. Returns the store and a
    report row per language (a group's seconds, forward pass and write, shared out by tokens)."""
    options.check(spec, models_dir)
    loader = Loader(spec, options, models_dir, loaded)
    store = stage_one_store(cache_dir, options.cache_key(models.identity(spec, models_dir=models_dir), corpus.name))
    return compute_missing(corpus, store, loader=loader, compute=partial(state_writes, store=store, options=options))


def extract_counts(corpus: ParallelCorpus, spec: ModelSpec, cache_dir: str | Path, *,
                   options: StageOneOptions = StageOneOptions(), prompt: str = "",
                   models_dir: str | Path | None = None,
                   loaded: tuple | None = None) -> tuple[StateStore, pd.DataFrame]:
    """Stage one for language neurons: cache each neuron's count of active tokens per language (``active``,
    layers × neurons, and the tokens counted), one language at a time; with ``prompt``, each unit is read after
    it and only the unit's tokens count (so ``skip_bos`` does not apply, and ``batch_tokens`` is not used).
    Reuse, locks and the report as ``extract_corpus``."""
    options = replace(options, skip_bos=False, group_units=1, batch_tokens=None)
    options.check(spec, models_dir)
    loader = Loader(spec, options, models_dir, loaded)
    key = options.cache_key(models.identity(spec, models_dir=models_dir), corpus.name)
    store = stage_one_store(cache_dir, {**key, "product": "activation_counts", "prompt": prompt})
    compute = partial(count_writes, store=store, prompt=prompt, options=options)
    return compute_missing(corpus, store, loader=loader, compute=compute)


def stage_one_store(cache_dir: str | Path, key: dict) -> StateStore:
    """The store under ``cache_dir`` for ``key``; a local folder must be one the tool can create."""
    store = StateStore(cache_dir, key)
    if store.local:
        check_creatable(store.root, "cache_dir")
    return store


def compute_missing(corpus: ParallelCorpus, store: StateStore, *, loader: Loader,
                    compute: Compute) -> tuple[StateStore, pd.DataFrame]:
    """Run ``compute(corpus, group, model_and_tokenizer)`` (which returns one cache write per language)
    for every planned group with a language the cache lacks, under the group's locks, writing in the background;
    then the report."""
    status = {language: store.status(language, corpus.fingerprint(language)) for language in corpus.languages}
    pending = [language for language in corpus.languages if status[language] != "complete"]
    units = {language: len(corpus.units[language]) for language in corpus.languages}
    bar = tqdm(total=len(pending), desc=f"stage one: {loader.spec.name}", unit="language", disable=not pending)
    writer = GroupWriter(store, bar)
    try:
        with writer:
            for group in language_groups(corpus.languages, units, loader.options.group_units):  # ignores the cache
                if set(group) & set(pending):
                    run_group(corpus, store, group, status=status, loader=loader, compute=compute, writer=writer)
    except KeyboardInterrupt:
        bar.close()
        done = sum(store.status(language, corpus.fingerprint(language)) == "complete" for language in corpus.languages)
        raise Interrupted(f"interrupted: {done} of {len(corpus.languages)} languages cached in {store.url()}; "
                          "run the same command again to resume") from None
    finally:   # its line ended before any error is said, so that the error has a line of its own
        bar.close()
    return store, report(corpus, store, status=status, seconds=writer.seconds)


def run_group(corpus: ParallelCorpus, store: StateStore, group: list[str], *, status: dict, loader: Loader,
              compute: Compute, writer: GroupWriter) -> None:
    """One planned group: lock it, compute what is still missing (another job may have written it meanwhile),
    and hand the writes to the writer."""
    pending = [language for language in group if status[language] != "complete"]
    writer.bar.set_postfix_str(", ".join(group) if len(group) < 4 else f"{group[0]} … {group[-1]}")
    started = time.perf_counter()
    held = writer.lock(group)
    try:
        status.update({language: store.status(language, corpus.fingerprint(language)) for language in group})
        todo = [language for language in group if status[language] != "complete"]  # under the lock
        writes = compute(corpus, group, loader()) if todo else []
        writes = [write for language, write in zip(group, writes) if language in todo]
    except BaseException:
        held.close()
        raise
    writer.submit(writes, held, languages=pending, seconds=time.perf_counter() - started)


STATUS_WORDS = {"complete": "reused", "missing": "written", "stale": "rewritten (corpus changed)",
                "corrupt": "rewritten (corrupt entry)"}


def report(corpus: ParallelCorpus, store: StateStore, *, status: dict[str, str],
           seconds: dict[str, float]) -> pd.DataFrame:
    """A row per language: source code, units, tokens, truncated units, what was done, seconds."""
    rows = []
    for language in corpus.languages:
        meta = store.metadata(language)
        rows.append({"language": language, "source": meta.get("source_code"), "units": len(meta["ids"]),
                     "tokens": store.n_tokens_total(language), "truncated": meta["n_truncated"],
                     "status": STATUS_WORDS[status[language]], "seconds": round(seconds.get(language, 0.0), 2)})
    return pd.DataFrame(rows)


def metadata(corpus: ParallelCorpus, language: str, model) -> dict:
    """What an entry records beside its arrays: the source's language code and the probe sites."""
    from neuronxa.stage_one.sites import module_paths

    sites = {kind: f"{SITE_NAMES[kind]} = {path}" for kind, path in module_paths(model).items()}
    return {"source_code": corpus.source_codes.get(language, language), "sites": sites}


def state_writes(corpus: ParallelCorpus, languages: list[str], loaded: tuple, *, store: StateStore,
                 options: StageOneOptions) -> list:
    """Pooled states of some languages (one batched pass over all their units); one cache write per language,
    to run when convenient (its arrays already on the host, in the store's precision)."""
    from neuronxa.stage_one import forward   # torch: imported by the jobs that run a model, not the warm ones

    texts = [text for language in languages for text in corpus.texts(language)]
    held = forward.pooled_tensors(*loaded, texts, batch_size=options.batch_size, max_length=options.max_length,
                                  skip_bos=options.skip_bos, progress=True, layers=options.layers,
                                  batch_tokens=options.batch_tokens)
    bounds = np.cumsum([0, *(len(corpus.units[language]) for language in languages)])
    return [partial(store.write, language, forward.rows_as_stored(held, lo, hi), corpus.ids(language),
                    corpus.fingerprint(language), n_tokens=held.n_tokens[lo:hi],
                    n_truncated=int(held.truncated[lo:hi].sum()), **metadata(corpus, language, loaded[0]))
            for language, lo, hi in zip(languages, bounds[:-1], bounds[1:])]


def count_writes(corpus: ParallelCorpus, languages: list[str], loaded: tuple, *, store: StateStore, prompt: str,
                 options: StageOneOptions) -> list:
    """Activation counts of some languages, one at a time; one cache write per language."""
    from neuronxa.stage_one import forward

    writes = []
    for language in languages:
        active, tokens, n_truncated = forward.activation_counts(
            *loaded, corpus.texts(language), prompt=prompt or None, batch_size=options.batch_size,
            max_length=options.max_length, progress=True, layers=options.layers)
        writes.append(partial(store.write_arrays, language, {"active": active}, corpus.ids(language),
                              corpus.fingerprint(language), n_tokens_total=tokens, n_truncated=n_truncated,
                              **metadata(corpus, language, loaded[0])))
    return writes
