"""The alignment task (the NeuronXA paper): stage two scores from the cache, downstream results and their
correlations, tables, plots and the MLflow run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from neuronxa import benchmarks, plots, scoring, tracking
from neuronxa.corpus import ParallelCorpus
from neuronxa.correlation import correlate
from neuronxa.errors import NeuronXAError
from neuronxa.models import spec_from_config
from neuronxa.pipeline import (Logged, load_corpus, model_name, pivot_language, stage_one, tracked_run,
                               write_csv)
from neuronxa.store import StateStore


def target_languages(cfg: DictConfig, corpus: ParallelCorpus) -> list[str]:
    """``score.languages`` resolved in the corpus (every corpus language when null)."""
    try:
        return [corpus.resolve(code) for code in cfg.score.languages] if cfg.score.languages else corpus.languages
    except NeuronXAError as error:
        raise NeuronXAError(f"score.languages: {error}") from None


def stage_two(cfg: DictConfig, corpus: ParallelCorpus, store: StateStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores per metric, language and layer, and their layer-pooled summary."""
    scores = scoring.score(store, list(cfg.metric.names), cfg.pooling.name, pivot_language(cfg, corpus),
                           target_languages(cfg, corpus))
    summary = scoring.summarise(scores, cfg.score.layer_pool)
    labels = {"model": model_name(cfg), "dataset": corpus.name, "pooling": cfg.pooling.name}
    return scores.assign(**labels)[[*labels, *scores.columns]], summary.assign(**labels)[[*labels, *summary.columns]]


def held_out(cfg: DictConfig, corpus: ParallelCorpus) -> dict[str, list[str]]:
    """Per language, the corpus units after ``dataset.max_units`` (what the stand-in benchmark reads)."""
    return benchmarks.held_out_texts(load_corpus(cfg.dataset), corpus, cfg.benchmark.get("units"))


def load_benchmarks(cfg: DictConfig, corpus: ParallelCorpus) -> pd.DataFrame | None:
    """Downstream results for this model: none, the offline stand-in, a CSV or lm-eval result files."""
    source = cfg.benchmark.source
    if source == "none":
        return None
    spec = spec_from_config(cfg.model)
    if source == "standin":
        return benchmarks.cached_standin(spec, held_out(cfg, corpus), cfg.cache.dir, cfg.extract.max_length,
                                         cfg.model.dtype, cfg.model.device)
    if cfg.benchmark.get("path") is None:
        raise NeuronXAError(f"benchmark={source} needs its results: pass benchmark.path=/path/to/results")
    aliases = (spec.name_or_path, *cfg.benchmark.get("model_aliases", []))
    if source == "csv":
        return benchmarks.for_model(benchmarks.read_csv(cfg.benchmark.path), spec.name, aliases)
    if source == "lm_eval":
        paths = [cfg.benchmark.path] if isinstance(cfg.benchmark.path, str) else list(cfg.benchmark.path)
        return benchmarks.read_lm_eval(paths, spec.name, cfg.benchmark.metric_key)
    raise NeuronXAError(f"unknown benchmark source {source!r}: use none, standin, csv or lm_eval")


def make_plots(cfg: DictConfig, scores: pd.DataFrame, store: StateStore, folder: Path) -> list[Path]:
    """Layer curves and a heatmap per metric, and a t-SNE of NAS beside hidden states (Figure 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    title = f"{scores.model.iloc[0]} · {scores.dataset.iloc[0]} · {cfg.pooling.name}"
    for metric in scores.metric.unique():
        if metric.startswith("retrieval.") and not metric.endswith("bidirectional"):
            continue
        made.append(plots.layer_curves(scores, metric, folder / f"{metric}_by_layer.png", f"{metric} · {title}"))
        made.append(plots.heatmap(plots.by_layer(scores, metric), folder / f"{metric}_heatmap.png", f"{metric} · {title}"))
    pivot = scores["pivot"].iloc[0]
    target = cfg.score.tsne_language or scores.language.iloc[0]
    layer = cfg.score.tsne_layer if cfg.score.tsne_layer is not None else store.n_layers(pivot) // 2
    pivot_rows = {unit: row for row, unit in enumerate(store.ids(pivot))}
    shared = [(pivot_rows[u], row) for row, u in enumerate(store.ids(target)) if u in pivot_rows]
    panels = {}
    for kind, label in (("hidden", "hidden states (embedding)"), ("nas", "neuron activation states (NAS)")):
        X = store.read(pivot, kind, cfg.pooling.name, layer)[[p for p, _ in shared]]
        Y = store.read(target, kind, cfg.pooling.name, layer)[[t for _, t in shared]]
        panels[label] = (X, Y)
    made.append(plots.tsne_pairs(panels, (pivot, target), folder / f"tsne_{target}_layer{layer}.png",
                                 f"{pivot} vs {target}, layer {layer} · {title}"))
    return made


def _short(metric: str) -> str:
    """A narrow column name: retrieval.nas.pivot_to_target -> R.nas.p→t."""
    for long, short in (("retrieval.", "R."), ("pivot_to_target", "p→t"), ("target_to_pivot", "t→p"),
                        ("bidirectional", "both")):
        metric = metric.replace(long, short)
    return metric


def print_results(summary: pd.DataFrame, correlations: pd.DataFrame | None) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 3):
        table = summary.pivot(index="language", columns="metric", values="score").rename(columns=_short)
        pooled_by, pivot = summary.layer_pool.iloc[0], summary["pivot"].iloc[0]
        print(f"\nlayer-pooled scores ({pooled_by} over layers; pivot {pivot}):")
        print(table.sort_values(table.columns[0], ascending=False).to_string())
        if correlations is not None:
            print("\ncorrelation with downstream results across languages:")
            shown = ["metric", "benchmark", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "note"]
            print(correlations[shown].to_string(index=False))


def run(cfg: DictConfig, folder: Path) -> None:
    """The alignment job for one config, in its MLflow run; tables and plots go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-{cfg.pooling.name}-{cfg.metric.name}", align)


def align(cfg: DictConfig, folder: Path) -> Logged:
    """Corpus, stage one, stage two, correlations; tables and plots in ``folder``; returns what to log."""
    for metric in cfg.metric.names:
        scoring.representations(metric)  # an unknown metric fails before any forward pass
    scoring.check_layer_pool(cfg.score.layer_pool)
    corpus = load_corpus(cfg.dataset, cfg.dataset.get("max_units"))
    corpus.validate(pivot_language(cfg, corpus))
    target_languages(cfg, corpus)  # and so does an unknown target language
    results = None
    if cfg.benchmark.source == "standin":
        held_out(cfg, corpus)  # no held-out text: say so before any forward pass
    else:
        results = load_benchmarks(cfg, corpus)  # a bad results file fails before any forward pass
    store = stage_one(cfg, cfg.model, corpus)
    scores, summary = stage_two(cfg, corpus, store)
    if cfg.benchmark.source == "standin":
        results = load_benchmarks(cfg, corpus)
    correlations = None
    if results is not None:
        correlations = correlate(summary, results, summary["pivot"].iloc[0])
        correlations.insert(0, "pooling", cfg.pooling.name)
        correlations.insert(0, "model", model_name(cfg))
    print_results(summary, correlations)

    folder.mkdir(parents=True, exist_ok=True)
    tables = [write_csv(scores, folder / "scores.csv"), write_csv(summary, folder / "summary.csv")]
    if correlations is not None:
        tables += [write_csv(correlations, folder / "correlations.csv"), write_csv(results, folder / "benchmarks.csv")]
    figures = make_plots(cfg, scores, store, folder / "plots") if cfg.score.plots else []
    print(f"\nrun folder: {folder}")
    values, series = tracking.score_metrics(summary, scores)
    if correlations is not None:
        values.update({f"pearson.{row.metric}.{row.benchmark}": row.pearson_r for row in correlations.itertuples()})
    tags = {"dataset": corpus.name, "pooling": cfg.pooling.name, "metric": cfg.metric.name, "cache": store.url()}
    return Logged(tags, values, series, tables + figures)
