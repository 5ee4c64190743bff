"""Command line: ``python -m neuronxa.run [overrides]`` (Hydra; ``-m`` for sweeps).

Composes the config and calls the stages in order: corpus → stage one (cache) → stage two (scores) →
benchmarks and correlations → tables, plots and the MLflow run. Bad input ends with a one-line error
(``debug=true`` for the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from neuronxa import benchmarks, models, neurons, plots, scoring, tracking
from neuronxa.corpus import ParallelCorpus, read_corpus
from neuronxa.correlation import correlate
from neuronxa.errors import NeuronXAError
from neuronxa.extract import extract_corpus
from neuronxa.models import spec_from_config
from neuronxa.store import StateStore

_READER_OPTIONS = {"udhr": ("unit",), "flores": ("split",)}


def load_corpus(dataset: DictConfig, max_units: int | None = None) -> ParallelCorpus:
    """The configured corpus with its languages, and at most ``max_units`` units per language."""
    options = {name: dataset[name] for name in _READER_OPTIONS.get(dataset.name, ())}
    languages = list(dataset.languages) if dataset.get("languages") else None
    return read_corpus(dataset.name, dataset.path, languages, max_units, **options)


def plain(value):
    """A config value as plain Python (a mapping such as a device map given as a DictConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value


def pivot_language(cfg: DictConfig, corpus: ParallelCorpus) -> str:
    try:
        return corpus.resolve(cfg.score.pivot)
    except NeuronXAError as error:
        raise NeuronXAError(f"score.pivot: {error} Set score.pivot to one of the corpus languages.") from None


def cached(cfg: DictConfig, model: DictConfig, corpus: ParallelCorpus,
           counts_prompt: str | None = None) -> StateStore:
    """Stage one for ``model``: pooled states (or, with ``counts_prompt``, activation counts), reusing the
    cache; prints what was written or reused."""
    store, report = extract_corpus(
        corpus, spec_from_config(model), cfg.cache.dir,
        max_units=cfg.dataset.get("max_units"), max_length=cfg.extract.max_length,
        batch_size=cfg.extract.batch_size, dtype=model.dtype, device=model.device,
        device_map=plain(model.get("device_map")), offload_folder=model.get("offload_folder"),
        skip_bos=cfg.pooling.skip_bos, counts_prompt=counts_prompt, group_units=cfg.extract.group_units,
        layers=cfg.extract.get("layers"),
    )
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        print(report.to_string(index=False))
    counts = report.status.value_counts().to_dict()
    print(f"stage one: {', '.join(f'{n} {s}' for s, n in counts.items())}; truncated units: "
          f"{int(report.truncated.sum())} (max_length {cfg.extract.max_length}); cache: {store.url()}")
    return store


def stage_two(cfg: DictConfig, corpus: ParallelCorpus, store: StateStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores per metric, language and layer, and their layer-pooled summary."""
    pivot = pivot_language(cfg, corpus)
    languages = [corpus.resolve(code) for code in cfg.score.languages] if cfg.score.languages else corpus.languages
    scores = scoring.score(store, list(cfg.metric.names), cfg.pooling.name, pivot, languages)
    summary = scoring.summarise(scores, cfg.score.layer_pool)
    labels = {"model": model_name(cfg), "dataset": corpus.name, "pooling": cfg.pooling.name}
    return scores.assign(**labels)[[*labels, *scores.columns]], summary.assign(**labels)[[*labels, *summary.columns]]


def model_name(cfg: DictConfig) -> str:
    """The model's name in tables and tags: its config name, or the hub id / folder for ``model=hf``."""
    return spec_from_config(cfg.model).name


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
    """The whole job for one config; tables and plots go to ``folder``."""
    if cfg.tracking.enabled:
        tracking.check_reachable(cfg.tracking.uri)
    for metric in cfg.metric.names:
        scoring.representations(metric)  # an unknown metric fails before any forward pass
    corpus = load_corpus(cfg.dataset, cfg.dataset.get("max_units"))
    corpus.validate(pivot_language(cfg, corpus))
    results = None
    if cfg.benchmark.source == "standin":
        held_out(cfg, corpus)  # no held-out text: say so before any forward pass
    else:
        results = load_benchmarks(cfg, corpus)  # a bad results file fails before any forward pass
    store = cached(cfg, cfg.model, corpus)
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
    tables = [_csv(scores, folder / "scores.csv"), _csv(summary, folder / "summary.csv")]
    if correlations is not None:
        tables += [_csv(correlations, folder / "correlations.csv"), _csv(results, folder / "benchmarks.csv")]
    figures = make_plots(cfg, scores, store, folder / "plots") if cfg.score.plots else []
    print(f"\nrun folder: {folder}")
    if cfg.tracking.enabled:
        values, series = tracking.score_metrics(summary, scores)
        if correlations is not None:
            values.update({f"pearson.{row.metric}.{row.benchmark}": row.pearson_r for row in correlations.itertuples()})
        log(cfg, f"{cfg.model.name}-{cfg.pooling.name}-{cfg.metric.name}",
            {"dataset": corpus.name, "pooling": cfg.pooling.name, "metric": cfg.metric.name, "cache": store.url()},
            values, series, tables + figures)


def log(cfg: DictConfig, run_name: str, tags: dict[str, str], values: dict[str, float],
        series: list[tuple[str, float, int]], files: list[Path]) -> None:
    """One MLflow run with the flattened config as params, the model and experiment as tags."""
    run_id = tracking.log_run(
        cfg.tracking.uri, cfg.tracking.experiment, run_name, tracking.flatten(OmegaConf.to_container(cfg, resolve=True)),
        {"model": model_name(cfg), "experiment": cfg.tracking.experiment, "task": cfg.task.name, **tags},
        values, series, files, Path(cfg.tracking.artifacts),
    )
    print(f"MLflow run {run_id} in experiment {cfg.tracking.experiment!r} ({cfg.tracking.uri}); `make ui` to browse")


def identified(cfg: DictConfig, model: DictConfig, corpus: ParallelCorpus) -> tuple[pd.DataFrame, int]:
    """Stage one's activation counts for ``model`` (cached), then the identified neurons and the layer count."""
    store = cached(cfg, model, corpus, counts_prompt=cfg.task.prompt or "")
    active = [store.array(language, "active") for language in corpus.languages]
    prob = neurons.probabilities(active, [store.n_tokens_total(lang) for lang in corpus.languages])
    found = neurons.identify(prob, cfg.task.method, cfg.task.top_rate, cfg.task.filter_rate, cfg.task.bar_rate,
                             cfg.task.lam)
    return found, prob.shape[0]


def neurons_job(cfg: DictConfig, folder: Path) -> None:
    """Language neurons: identify, locate over layers, compare with an aligned model, deactivate."""
    if cfg.tracking.enabled:
        tracking.check_reachable(cfg.tracking.uri)
    dataset = cfg.dataset.copy()
    if cfg.task.languages:
        dataset.languages = list(cfg.task.languages)
    corpus = load_corpus(dataset, cfg.dataset.get("max_units"))
    corpus.validate()
    texts = None
    if cfg.task.deactivate:
        full = load_corpus(dataset)
        texts = benchmarks.held_out_texts(full, corpus, cfg.task.eval_units)
    found, n_layers = identified(cfg, cfg.model, corpus)
    languages = corpus.languages
    named = found.assign(languages=found.languages.map(lambda idx: " ".join(languages[i] for i in idx)))
    per_language = neurons.counts_by_language(found, languages)
    layers = neurons.by_layer(found, n_layers)
    stages = neurons.stages(layers)
    shared = neurons.overlap(found, languages)
    lam = found.attrs["lam"]
    print(f"\n{cfg.task.method}: {len(found)} neurons classified (bar p > {found.attrs['bar']:.4f}"
          + (f", lambda = {lam:.4f}" if lam is not None else "") + ")")
    print(per_language.to_string(index=False))
    print("\nby layer:\n" + layers.T.to_string())
    print(f"\nstages ({neurons.STAGE_RULE}):\n" + stages.to_string(index=False))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plots").mkdir(exist_ok=True)
    title = f"{model_name(cfg)} · {corpus.name} · {cfg.task.method}"
    files = [_csv(named, folder / "neurons.csv"), _csv(per_language, folder / "counts_by_language.csv"),
             _csv(layers, folder / "by_layer.csv", index=True), _csv(stages, folder / "stages.csv"),
             _csv(shared, folder / "overlap.csv", index=True),
             plots.stacked_by_layer(layers, folder / "plots" / "neurons_by_layer.png", f"neuron types by layer · {title}"),
             plots.heatmap(shared, folder / "plots" / "overlap.png", f"shared language neurons · {title}", "language",
                           vmin=0, vmax=None, cmap="viridis")]
    values = {f"{kind}.{row.language}": getattr(row, kind) for row in per_language.itertuples() for kind in neurons.TYPES}
    series = [(f"{kind}.by_layer", layers.loc[layer, kind], layer) for layer in layers.index for kind in neurons.TYPES]
    if cfg.task.compare_model:
        files += compare_models(cfg, corpus, found, n_layers, folder)
    if cfg.task.deactivate:
        model, tokenizer = models.load(spec_from_config(cfg.model), dtype=cfg.model.dtype, device=cfg.model.device)
        own, control, intact = neurons.deactivation_matrix(model, tokenizer, found, languages, texts, cfg.task.seed,
                                                           cfg.extract.max_length)
        summary = deactivation_summary(own, control, intact)
        print("\nintact perplexity on held-out units:\n" + intact.round(2).to_frame("perplexity").T.to_string())
        print("\nperplexity change, deactivated language's neurons (rows) x evaluated language (columns):")
        print(own.round(2).to_string())
        print("\nsame-size random neurons (control):\n" + control.round(2).to_string())
        print("\n" + summary.round(3).to_string(index=False))
        values.update({f"deactivation.{row.set}.{row.cell}": row.mean_log_ratio for row in summary.itertuples()})
        limit = float(np.nanmax(np.abs(np.concatenate([own.values, control.values])))) or 1.0
        files += [_csv(own, folder / "deactivation.csv", index=True),
                  _csv(intact.to_frame("perplexity"), folder / "perplexity_intact.csv", index=True),
                  _csv(control, folder / "deactivation_random.csv", index=True),
                  _csv(summary, folder / "deactivation_summary.csv"),
                  plots.heatmap(own, folder / "plots" / "deactivation.png", f"perplexity change · {title}",
                                "evaluated language", -limit, limit, "RdBu_r"),
                  plots.heatmap(control, folder / "plots" / "deactivation_random.png",
                                f"random control · {title}", "evaluated language", -limit, limit, "RdBu_r")]
    print(f"\nrun folder: {folder}")
    if cfg.tracking.enabled:
        log(cfg, f"{cfg.model.name}-neurons-{cfg.task.method}", {"dataset": corpus.name, "method": cfg.task.method},
            values, series, files)


def deactivation_summary(own: pd.DataFrame, control: pd.DataFrame, intact: pd.Series) -> pd.DataFrame:
    """Per neuron set (a language's own neurons, or the random control), on the diagonal (the language's own
    text) and off it: the mean log perplexity ratio (deactivated / intact, so that languages with a high
    perplexity do not dominate), and how many evaluated languages suffer most from their own row."""
    diagonal = np.eye(len(own), dtype=bool)
    rows = []
    for name, frame in (("language", own), ("random", control)):
        log_ratio = np.log((frame + intact) / intact).to_numpy()
        own_worst = int(sum(np.argmax(log_ratio[:, j]) == j for j in range(len(frame))))
        for cell, mask in (("diagonal", diagonal), ("off_diagonal", ~diagonal)):
            rows.append({"set": name, "cell": cell, "mean_log_ratio": float(np.nanmean(log_ratio[mask])),
                         "own_row_hurts_most": f"{own_worst}/{len(frame)}" if cell == "diagonal" else ""})
    return pd.DataFrame(rows)


def compare_models(cfg: DictConfig, corpus: ParallelCorpus, base: pd.DataFrame, n_layers: int,
                   folder: Path) -> list[Path]:
    """Base (the run's model) vs ``task.compare_model`` (e.g. its aligned version) on the same corpus."""
    config = models.CONF_DIR / "model" / f"{cfg.task.compare_model}.yaml"
    other = OmegaConf.load(config) if config.is_file() else OmegaConf.merge(
        cfg.model, {"name": "hf", "name_or_path": cfg.task.compare_model, "gguf": None})
    aligned, other_layers = identified(cfg, other, corpus)
    if other_layers != n_layers:
        raise NeuronXAError(f"task.compare_model has {other_layers} layers, the model {n_layers}: "
                            "base and aligned models must share an architecture")
    aligned_languages = ([corpus.resolve(code) for code in cfg.task.aligned_languages]
                         if cfg.task.aligned_languages else None)
    layers, per_language = neurons.compare(base, aligned, corpus.languages, n_layers, aligned_languages)
    print(f"\n{cfg.task.compare_model} minus {model_name(cfg)}, per language:\n" + per_language.to_string(index=False))
    print("\nper layer:\n" + layers.T.to_string())
    return [_csv(layers, folder / "compare_by_layer.csv", index=True),
            _csv(per_language, folder / "compare_by_language.csv")]


def _csv(frame: pd.DataFrame, path: Path, index: bool = False) -> Path:
    frame.to_csv(path, index=index)
    return path


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        job = neurons_job if cfg.task.name == "neurons" else run
        job(cfg, Path(HydraConfig.get().runtime.output_dir))
    except NeuronXAError as error:
        if cfg.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
