"""The alignment task (the NeuronXA paper): stage two scores from the cache, downstream results and their
correlations, tables, plots and the MLflow run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from neuronxa.data import benchmarks
from neuronxa.data.corpus import ParallelCorpus, held_out_texts
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models, standin
from neuronxa.stage_one.models import ModelSpec, spec_from_config
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import registry, remembered, scoring
from neuronxa.stage_two.correlation import Resampling, compare, correlate
from neuronxa.tasks import drawing, tracking
from neuronxa.tasks.common import Logged, load_corpus, model_name, pivot_language, stage_one, tracked_run, write_csv

log = logging.getLogger(__name__)


def target_languages(cfg: DictConfig, corpus: ParallelCorpus) -> list[str]:
    """``score.languages`` resolved in the corpus (every corpus language when null)."""
    try:
        return [corpus.resolve(code) for code in cfg.score.languages] if cfg.score.languages else corpus.languages
    except NeuronXAError as error:
        raise NeuronXAError(f"score.languages: {error}") from None


def resampling(cfg: DictConfig) -> Resampling:
    """The correlations' interval settings (``score.level``, ``score.bootstrap``, ``score.permutations``,
    ``score.seed``)."""
    return Resampling(cfg.score.bootstrap, cfg.score.permutations, float(cfg.score.level), cfg.score.seed)


@dataclass(frozen=True)
class Inputs:
    """What the job reads before a forward pass: the corpus, the pivot and target languages, the correlations'
    resampling, and the downstream results' source: the stand-in's held-out texts (it runs the model after stage
    one) or results read from files (either may be None)."""
    corpus: ParallelCorpus
    pivot: str
    targets: list[str]
    resampling: Resampling
    standin: dict[str, list[str]] | None
    results: pd.DataFrame | None


def in_front(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The frame with a constant column per label, in front."""
    return frame.assign(**labels)[[*labels, *frame.columns]]


def labelled(cfg: DictConfig, corpus: ParallelCorpus, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with model, dataset and pooling columns in front."""
    return in_front(frame, {"model": model_name(cfg), "dataset": corpus.name, "pooling": cfg.pooling.name})


def stage_two(cfg: DictConfig, inputs: Inputs, store: StateStore) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores per metric, language and layer, their layer-pooled summary with intervals, and the paired
    differences of the alignment scores."""
    scores, resampled = remembered.score(store, list(cfg.metric.names), cfg.pooling.name, pivot=inputs.pivot,
                                         languages=inputs.targets, resamples=cfg.score.resamples,
                                         seed=cfg.score.seed, keep=cfg.cache.scores)
    summary = scoring.summarise(scores, cfg.score.layer_pool, resampled, level=cfg.score.level)
    differences = scoring.differences(summary, resampled, cfg.score.level)
    return tuple(labelled(cfg, inputs.corpus, frame) for frame in (scores, summary, differences))


def standin_texts(cfg: DictConfig, corpus: ParallelCorpus, rest: ParallelCorpus) -> dict[str, list[str]]:
    """Per language, the held-out units (after ``dataset.max_units``) that the stand-in benchmark reads."""
    return held_out_texts(corpus, rest, cfg.benchmark.get("units"))


def lm_eval_results(cfg: DictConfig, spec: ModelSpec) -> pd.DataFrame:
    paths = [cfg.benchmark.path] if isinstance(cfg.benchmark.path, str) else list(cfg.benchmark.path)
    return benchmarks.read_lm_eval(paths, spec.name, cfg.benchmark.metric_key)


def csv_results(cfg: DictConfig, spec: ModelSpec) -> pd.DataFrame:
    aliases = (spec.name_or_path, *cfg.benchmark.get("model_aliases", []))
    return benchmarks.for_model(benchmarks.read_csv(cfg.benchmark.path), spec.name, aliases)


RESULT_READERS = {"csv": csv_results, "lm_eval": lm_eval_results}


def load_benchmarks(cfg: DictConfig) -> pd.DataFrame | None:
    """Downstream results for this model read from files: none, a CSV or lm-eval result files (the stand-in,
    which runs the model, is ``standin_results``)."""
    source = cfg.benchmark.source
    if source == "none":
        return None
    return RESULT_READERS[source](cfg, spec_from_config(cfg.model))


def standin_results(cfg: DictConfig, texts: dict[str, list[str]]) -> pd.DataFrame:
    """The offline stand-in benchmark: the model's bits per byte on the held-out texts (cached)."""
    return standin.cached_standin(spec_from_config(cfg.model), texts, cfg.cache.dir,
                                  max_length=cfg.extract.max_length, dtype=cfg.model.dtype, device=cfg.model.device,
                                  models_dir=cfg.paths.models)


def _interval_cells(frame: pd.DataFrame, value: str) -> pd.Series:
    """'0.958 [0.91, 0.99]' per row."""
    return frame.apply(lambda row: f"{row[value]:.3f} [{row.ci_low:.2f}, {row.ci_high:.2f}]", axis=1)


def print_scores(summary: pd.DataFrame, differences: pd.DataFrame, level: float) -> None:
    """The layer-pooled scores, the alignment scores' intervals and their paired differences."""
    with pd.option_context("display.width", 180, "display.max_columns", 30, "display.precision", 3):
        table = summary.pivot(index="language", columns="metric", values="score")
        table = table.rename(columns=lambda metric: registry.score(metric).label)
        pooled_by, pivot = summary.layer_pool.iloc[0], summary["pivot"].iloc[0]
        log.info(f"\nlayer-pooled scores ({pooled_by} over layers; pivot {pivot}):")
        log.info(table.sort_values(table.columns[0], ascending=False).to_string())
        shares = summary[summary.metric.isin(registry.of_kind("alignment"))]
        if shares.ci_low.notna().any():
            cells = shares.assign(cell=_interval_cells(shares, "score"))
            log.info(f"\n{level:.0%} intervals over the units (half-samples; n = {int(summary.n.max())}):")
            log.info(cells.pivot(index="language", columns="metric", values="cell").to_string())
        if len(differences) and differences.ci_low.notna().any():
            cells = differences.assign(cell=_interval_cells(differences, "difference"),
                                       pair=differences.metric_a + " − " + differences.metric_b)
            log.info(f"\npaired differences on the same units ({level:.0%} intervals):")
            log.info(cells.pivot(index="language", columns="pair", values="cell").to_string())


def print_correlations(correlations: pd.DataFrame | None, comparisons: pd.DataFrame | None) -> None:
    """The correlations with downstream results, and the comparisons of the alignment scores' correlations."""
    with pd.option_context("display.width", 180, "display.max_columns", 30, "display.precision", 3):
        if correlations is not None:
            log.info("\ncorrelation with downstream results across languages (interval: bootstrap over languages; "
                  "perm. p: permutation test):")
            shown = ["metric", "benchmark", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high",
                     "pearson_permutation_p", "spearman_rho", "spearman_permutation_p", "note"]
            log.info(correlations[shown].rename(columns=lambda c: c.replace("permutation_p", "perm_p")).to_string(index=False))
        if comparisons is not None and len(comparisons):
            log.info("\nare two alignment scores' correlations different? (Pearson; interval: paired bootstrap over "
                  "languages; p: Williams' t; every pair of metrics in comparisons.csv)")
            alignment = registry.of_kind("alignment")
            shown = comparisons[(comparisons.correlation == "pearson") & comparisons.metric_a.isin(alignment)
                                & comparisons.metric_b.isin(alignment)]
            log.info(shown.drop(columns=["model", "pooling", "correlation"]).to_string(index=False))


def run(cfg: DictConfig, folder: Path) -> None:
    """The alignment job for one config, in its MLflow run; tables and plots go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-{cfg.pooling.name}-{cfg.metric.name}", job=align)


def prepare(cfg: DictConfig) -> Inputs:
    """What the job reads before a forward pass, so that a mistake in it costs none."""
    settings = resampling(cfg)
    corpus, rest = load_corpus(cfg.dataset, cfg.dataset.get("max_units"), cache_dir=cfg.cache.dir)
    pivot = pivot_language(cfg, corpus)
    corpus.validate(pivot)
    targets = target_languages(cfg, corpus)
    if cfg.benchmark.source == "standin":   # the stand-in itself runs after stage one
        return Inputs(corpus, pivot, targets, settings, standin_texts(cfg, corpus, rest), None)
    return Inputs(corpus, pivot, targets, settings, None, load_benchmarks(cfg))


def correlated(cfg: DictConfig, inputs: Inputs, summary: pd.DataFrame, *,
               results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlations with the downstream results, and the comparisons of every two metrics' correlations."""
    labels = {"model": model_name(cfg), "pooling": cfg.pooling.name}
    correlations = correlate(summary, results, inputs.pivot, inputs.resampling)
    comparisons = compare(summary, results, inputs.pivot, inputs.resampling)
    return in_front(correlations, labels), in_front(comparisons, labels)


def align(cfg: DictConfig, folder: Path) -> Logged:
    """Corpus, stage one, stage two, correlations; tables and plots in ``folder``; returns what to log."""
    inputs = prepare(cfg)
    store = stage_one(cfg, cfg.model, inputs.corpus)
    scores, summary, differences = stage_two(cfg, inputs, store)
    results = standin_results(cfg, inputs.standin) if inputs.standin is not None else inputs.results
    correlations, comparisons = (None, None) if results is None else correlated(cfg, inputs, summary, results=results)
    print_scores(summary, differences, cfg.score.level)
    print_correlations(correlations, comparisons)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"scores": scores, "summary": summary, "differences": differences, "correlations": correlations,
              "comparisons": comparisons, "benchmarks": results}
    files = [write_csv(frame, folder / f"{name}.csv") for name, frame in tables.items() if frame is not None]
    if cfg.score.plots == "inline":
        tables = {"scores": scores, "summary": summary, "correlations": correlations}
        files += drawing.all_plots(cfg, tables, store, folder / "plots")
    log.info(f"\nrun folder: {folder}")
    values, series = tracking.score_metrics(summary, scores)
    if correlations is not None:
        values.update(tracking.correlation_metrics(correlations))
    tags = {"dataset": inputs.corpus.name, "pooling": cfg.pooling.name, "metric": cfg.metric.name,
            "cache": store.url()}
    step = models.training_step(spec_from_config(cfg.model))
    if step is not None:
        tags["step"] = str(step)   # a checkpoint of a training run (experiments/fig3.py plots against it)
    later = partial(drawing.in_background, folder, uri=cfg.tracking.uri) if cfg.score.plots == "background" else None
    return Logged(tags, values, series, files=files, corpora={"evaluation": inputs.corpus}, then=later)
