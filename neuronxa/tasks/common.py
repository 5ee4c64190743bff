"""The steps every task composes: read the configured corpus, run stage one through the cache, name the model,
write tables and log the MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.data.readers import read_corpus
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.cache import extract_corpus, extract_counts
from neuronxa.stage_one.models import spec_from_config
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.site_paths import Sites
from neuronxa.stage_one.store import StateStore
from neuronxa.tasks import tracking
from neuronxa.tasks.tracking import Logged

log = logging.getLogger(__name__)
_READER_OPTIONS = {"udhr": ("unit",), "flores": ("split",)}


def load_corpus(dataset: DictConfig, max_units: int | None = None, *,
                cache_dir: str | None = None) -> tuple[ParallelCorpus, ParallelCorpus]:
    """The configured corpus with its languages, read once and split into the first ``max_units`` units per
    language (scored) and the units after them (held out); the UDHR's parsed declarations are kept in
    ``cache_dir``."""
    options = {name: dataset[name] for name in _READER_OPTIONS.get(dataset.name, ())}
    if dataset.name == "udhr" and cache_dir is not None:
        options["cache_dir"] = cache_dir
    languages = list(dataset.languages) if dataset.get("languages") else None
    return read_corpus(dataset.name, dataset.path, languages, **options).split(max_units)



def plain(value):
    """A config value as plain Python (a mapping such as a device map given as a DictConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value


def pivot_language(cfg: DictConfig, corpus: ParallelCorpus) -> str:
    try:
        return corpus.resolve(cfg.score.pivot)
    except NeuronXAError as error:
        raise NeuronXAError(f"score.pivot: {error} Set score.pivot to one of the corpus languages.") from None


def stage_one_options(cfg: DictConfig, model: DictConfig) -> StageOneOptions:
    """Stage one's options from the config: units, length, pooling's BOS rule, layers, batching, dtype, device
    placement."""
    return StageOneOptions(max_units=cfg.dataset.get("max_units"), max_length=cfg.extract.max_length,
                           dtype=model.dtype, skip_bos=cfg.pooling.skip_bos, layers=cfg.extract.get("layers"),
                           batch_size=cfg.extract.batch_size, batch_tokens=cfg.extract.get("batch_tokens"),
                           group_units=cfg.extract.group_units, device=model.device,
                           device_map=plain(model.get("device_map")), offload_folder=model.get("offload_folder"),
                           sites=named_sites(model))


def named_sites(model: DictConfig) -> Sites | None:
    """The FFN probe sites the ``model`` config names (``model.sites``), if any."""
    given = plain(model.get("sites"))
    if not given:
        return None
    try:
        return Sites(**given)
    except TypeError:
        raise NeuronXAError(f"model.sites: expected a mapping with layers, ffn, act, down, gated (and gate, up, "
                            f"activation for a gated FFN without an act module; ffn_list for FFNs in a list beside "
                            f"the layers), not {given!r}") from None


def stage_one(cfg: DictConfig, model: DictConfig, corpus: ParallelCorpus) -> StateStore:
    """Stage one for ``model``: the pooled states the cache lacks are computed; prints what was written or
    reused."""
    store, report = extract_corpus(corpus, spec_from_config(model), cfg.cache.dir,
                                   options=stage_one_options(cfg, model), models_dir=cfg.paths.models)
    return reported(cfg, store, report)


def stage_one_counts(cfg: DictConfig, model: DictConfig, corpus: ParallelCorpus, *, prompt: str = "") -> StateStore:
    """Stage one for language neurons: the activation counts the cache lacks (each unit read after ``prompt``)
    are computed; prints what was written or reused."""
    store, report = extract_counts(corpus, spec_from_config(model), cfg.cache.dir,
                                   options=stage_one_options(cfg, model), prompt=prompt, models_dir=cfg.paths.models)
    return reported(cfg, store, report)


def reported(cfg: DictConfig, store: StateStore, report: pd.DataFrame) -> StateStore:
    """Log stage one's report (a row per language) and its totals; returns the store."""
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        log.info(report.to_string(index=False))
    counts = report.status.value_counts().to_dict()
    log.info(f"stage one: {', '.join(f'{n} {s}' for s, n in counts.items())}; truncated units: "
             f"{int(report.truncated.sum())} (max_length {cfg.extract.max_length}); cache: {store.url()}")
    return store


def model_name(cfg: DictConfig) -> str:
    """The model's name in tables and tags: its config name, or the hub id / folder for ``model=hf``."""
    return spec_from_config(cfg.model).name


def tracked_run(cfg: DictConfig, folder: Path, run_name: str, *, job: Callable[[DictConfig, Path], Logged]) -> None:
    """``job(cfg, folder)`` inside an MLflow run (when ``tracking.enabled``) that is opened before the job starts,
    with the flattened config as params, and closed with the job's status; the corpora the job read become the
    run's datasets."""
    if not cfg.tracking.enabled:
        logged = job(cfg, folder)
        if logged.then is not None:
            logged.then(None)
        return
    tracking.check_reachable(cfg.tracking.uri)
    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True))
    tags = {"model": model_name(cfg), "experiment": cfg.tracking.experiment, "task": cfg.task.name}
    with tracking.recorded(cfg.tracking.uri, cfg.tracking.experiment, run_name, params=params, tags=tags,
                           artifact_root=Path(cfg.tracking.artifacts)) as recorder:
        logged = job(cfg, folder)
        recorder.record(logged, source=corpus_source(cfg))
    log.info(f"MLflow run {recorder.run_id} in experiment {cfg.tracking.experiment!r} ({cfg.tracking.uri}); "
             "`make ui` to browse")
    if logged.then is not None:
        logged.then(recorder.run_id)


def corpus_source(cfg: DictConfig) -> str:
    """Where the configured corpus is read from (an absolute path; empty when the dataset names none)."""
    path = cfg.dataset.get("path")
    return str(Path(path).resolve()) if path else ""


def write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> Path:
    frame.to_csv(path, index=index)
    return path
