"""The language-neurons task (the language-neurons paper): activation counts from stage one or imported from the
anchors' files, identification, the spread over layers and the four stages, base vs aligned, deactivation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from neuronxa.data.corpus import ParallelCorpus, held_out_texts
from neuronxa.errors import NeuronXAError
from neuronxa.neurons import interop, tables
from neuronxa.neurons.deactivation import deactivation_matrix, deactivation_summary
from neuronxa.neurons.identify import TYPES, identify, probabilities
from neuronxa.stage_one import models
from neuronxa.stage_one.models import spec_from_config
from neuronxa.stage_one.probes import layer_widths
from neuronxa.stage_one.sites import name_sites
from neuronxa.tasks import plots
from neuronxa.tasks.common import (
    Logged,
    load_corpus,
    model_name,
    named_sites,
    stage_one_counts,
    tracked_run,
    write_csv,
)

log = logging.getLogger(__name__)


def identify_from(prob: np.ndarray, task: DictConfig) -> pd.DataFrame:
    """``identify`` with the task's options."""
    return identify(prob, task.method, task.top_rate, filter_rate=task.filter_rate, bar_rate=task.bar_rate,
                    lam=task.lam)


def identified(cfg: DictConfig, model: DictConfig, corpus: ParallelCorpus) -> tuple[pd.DataFrame, int]:
    """Stage one's activation counts for ``model`` (cached), then the identified neurons and the layer count."""
    store = stage_one_counts(cfg, model, corpus, prompt=cfg.task.prompt or "")
    active = [store.array(language, "active") for language in corpus.languages]
    prob = probabilities(active, [store.n_tokens_total(lang) for lang in corpus.languages])
    return identify_from(prob, cfg.task), prob.shape[0]


def imported_languages(task: DictConfig, n_languages: int, what: str) -> list[str]:
    """The names of an imported file's languages: ``task.languages``, one per language, in file order."""
    names = list(task.languages or [])
    if len(names) != n_languages:
        raise NeuronXAError(f"{what} holds {n_languages} languages but task.languages names {len(names)}: "
                            f"give task.languages=[...] with one name per language, in the files' order")
    return names


def imported(task: DictConfig) -> tuple[pd.DataFrame, int, list[str]] | None:
    """Neurons from a published mask (``task.mask``) or from published activation counts (``task.counts``),
    with their layer count and language names; None when the task computes its own counts."""
    if task.get("mask"):
        found = interop.read_mask(task.mask)
        return found, found.attrs["n_layers"], imported_languages(task, found.attrs["n_languages"], "task.mask")
    if task.get("counts"):
        counts = interop.read_counts(list(task.counts), list(task.prefix_counts) if task.get("prefix_counts") else None)
        prob = probabilities([counts.counts[..., k] for k in range(counts.counts.shape[-1])], counts.tokens)
        names = imported_languages(task, prob.shape[-1], "task.counts")
        log.info(f"imported activation counts: {prob.shape[0]} layers × {prob.shape[1]} neurons × {len(names)} "
              f"languages ({', '.join(sorted(set(counts.formats)))})")
        return identify_from(prob, task), prob.shape[0], names
    return None


def task_dataset(cfg: DictConfig) -> DictConfig:
    """The dataset config with the task's languages."""
    dataset = cfg.dataset.copy()
    if cfg.task.languages:
        dataset.languages = list(cfg.task.languages)
    return dataset


def task_corpus(cfg: DictConfig) -> tuple[ParallelCorpus, ParallelCorpus]:
    """The corpus restricted to the task's languages, and its held-out units (after ``dataset.max_units``)."""
    corpus, rest = load_corpus(task_dataset(cfg), cfg.dataset.get("max_units"), cache_dir=cfg.cache.dir)
    corpus.validate()
    return corpus, rest


def describe(found: pd.DataFrame, task: DictConfig) -> str:
    """One line: which method, λ and bar produced ``found`` (or that it was imported)."""
    if task.get("mask"):
        return f"imported mask {task.mask}: {len(found)} neurons"
    lam, method = found.attrs["lam"], found.attrs["method"]
    searched = " (searched)" if task.lam is None else " (given)"
    return (f"{method}: {int(found.kept.sum())} neurons kept of the top {task.top_rate:g}, {len(found)} classified; "
            f"bar p > {found.attrs['bar']:.4f}" + (f", lambda = {lam:.6g}{searched}" if lam is not None else ""))


def run(cfg: DictConfig, folder: Path) -> None:
    """The language-neurons job, in its MLflow run; tables, the mask and plots go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-neurons-{cfg.task.method}", job=language_neurons)


def language_neurons(cfg: DictConfig, folder: Path) -> Logged:
    """Identify (or import), locate over layers, compare with an aligned model, deactivate."""
    task = cfg.task
    source = imported(task)     # published files are read before any model loads
    needs_corpus = source is None or task.deactivate or task.compare_model
    corpus, rest = task_corpus(cfg) if needs_corpus else (None, None)
    texts = held_out_texts(corpus, rest, task.eval_units) if task.deactivate else None
    if source is None:
        found, n_layers = identified(cfg, cfg.model, corpus)
        languages = corpus.languages
    else:
        found, n_layers, languages = source
        languages = [corpus.resolve(code) for code in languages] if corpus is not None else languages
    log.info("\n" + describe(found, task))
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    title = f"{model_name(cfg)} · {corpus.name if corpus else 'imported'} · {task.method}"
    files, values, series = report(found, languages, n_layers, folder=folder, title=title)
    deactivations = [(cfg.model, found, "")]
    if task.compare_model:
        other, other_found, compare_files = compare_models(cfg, corpus, found, n_layers=n_layers, folder=folder)
        files += compare_files
        deactivations.append((other, other_found, "compared_"))
    for model, model_found, prefix in deactivations if task.deactivate else ():
        more_files, more_values = deactivate(cfg, model, model_found, languages=languages, texts=texts,
                                             n_layers=n_layers, folder=folder, title=title, prefix=prefix)
        files += more_files
        values.update(more_values)
    log.info(f"\nrun folder: {folder}")
    return Logged({"dataset": corpus.name if corpus else "imported", "method": task.method}, values, series,
                  files=files, corpora={"evaluation": corpus} if corpus else {})


def report(found: pd.DataFrame, languages: list[str], n_layers: int, *, folder: Path,
           title: str) -> tuple[list[Path], dict[str, float], list[tuple[str, float, int]]]:
    """Counts per language and layer, the four stages and the overlap: printed, written (with the anchors'
    mask), plotted; returns the files, the MLflow values and the per-layer series."""
    named = found.assign(languages=found.languages.map(lambda idx: " ".join(languages[i] for i in idx)))
    per_language = tables.counts_by_language(found, languages)
    layers = tables.by_layer(found, n_layers)
    stages = tables.stages(layers)
    shared = tables.overlap(found, languages)
    log.info(per_language.to_string(index=False))
    log.info("\nby layer:\n" + layers.T.to_string())
    log.info(f"\nstages ({tables.STAGE_RULE}):\n" + stages.to_string(index=False))
    mask = interop.write_mask(found, folder / "mask.pt", n_languages=len(languages), n_layers=n_layers)
    log.info(f"mask (the anchors' format, [language][layer], languages in this order: {' '.join(languages)}): {mask}")
    files = [write_csv(named, folder / "neurons.csv"), write_csv(per_language, folder / "counts_by_language.csv"),
             write_csv(layers, folder / "by_layer.csv", index=True), write_csv(stages, folder / "stages.csv"),
             write_csv(shared, folder / "overlap.csv", index=True), mask,
             plots.stacked_by_layer(layers, folder / "plots" / "neurons_by_layer.png", f"neuron types by layer · {title}"),
             plots.heatmap(shared, folder / "plots" / "overlap.png", f"shared language neurons · {title}",
                           xlabel="language", vmin=0, vmax=None, cmap="viridis")]
    values = {f"{kind}.{row.language}": getattr(row, kind) for row in per_language.itertuples() for kind in TYPES}
    series = [(f"{kind}.by_layer", layers.loc[layer, kind], layer) for layer in layers.index for kind in TYPES]
    return files, values, series


def check_shape(found: pd.DataFrame, n_layers: int, model) -> None:
    """A mask or counts from another model cannot switch off this model's neurons."""
    widths = layer_widths(model)
    model_layers, width = len(widths), max(widths)
    if n_layers != model_layers or (len(found) and int(found.neuron.max()) >= width):
        raise NeuronXAError(f"the neurons have {n_layers} layers (largest index {int(found.neuron.max())}) but the "
                            f"model has {model_layers} layers × {width} neurons: deactivate on the model they came "
                            "from (model=...) or set task.deactivate=false")


def deactivate(cfg: DictConfig, model_conf: DictConfig, found: pd.DataFrame, *, languages: list[str],
               texts: dict[str, list[str]], n_layers: int, folder: Path, title: str,
               prefix: str = "") -> tuple[list[Path], dict[str, float]]:
    """Perplexity with each language's neurons switched off, beside same-size random sets: printed and written
    (file and metric names start with ``prefix``, e.g. for the compared model)."""
    spec = spec_from_config(model_conf)
    model, tokenizer = models.load(spec, dtype=model_conf.dtype, device=model_conf.device, models_dir=cfg.paths.models)
    name_sites(model, named_sites(model_conf))
    check_shape(found, n_layers, model)
    own, control, intact = deactivation_matrix(model, tokenizer, found, languages=languages, texts=texts,
                                               seed=cfg.task.seed, max_length=cfg.extract.max_length)
    summary = deactivation_summary(own, control, intact)
    print_deactivation(spec.name, own, control, intact=intact, summary=summary)
    values = {f"{prefix}deactivation.{row.set}.{row.cell}": row.mean_log_ratio for row in summary.itertuples()}
    limit = float(np.nanmax(np.abs(np.concatenate([own.values, control.values])))) or 1.0
    title = f"{spec.name} · {title.split(' · ', 1)[-1]}"
    files = [write_csv(own, folder / f"{prefix}deactivation.csv", index=True),
             write_csv(intact.to_frame("perplexity"), folder / f"{prefix}perplexity_intact.csv", index=True),
             write_csv(control, folder / f"{prefix}deactivation_random.csv", index=True),
             write_csv(summary, folder / f"{prefix}deactivation_summary.csv"),
             plots.heatmap(own, folder / "plots" / f"{prefix}deactivation.png", f"perplexity change · {title}",
                           xlabel="evaluated language", vmin=-limit, vmax=limit, cmap="RdBu_r"),
             plots.heatmap(control, folder / "plots" / f"{prefix}deactivation_random.png",
                           f"random control · {title}", xlabel="evaluated language", vmin=-limit, vmax=limit,
                           cmap="RdBu_r")]
    return files, values


def print_deactivation(name: str, own: pd.DataFrame, control: pd.DataFrame, *, intact: pd.Series,
                       summary: pd.DataFrame) -> None:
    """The intact perplexities, the two deactivation matrices and their summary, for the model ``name``."""
    log.info(f"\n{name}: intact perplexity on held-out units:\n" + intact.round(2).to_frame("perplexity").T.to_string())
    log.info(f"\n{name}: perplexity change, deactivated language's neurons (rows) x evaluated language (columns):")
    log.info(own.round(2).to_string())
    log.info("\nsame-size random neurons (control):\n" + control.round(2).to_string())
    log.info("\n" + summary.round(3).to_string(index=False))


def compare_models(cfg: DictConfig, corpus: ParallelCorpus, base: pd.DataFrame, *, n_layers: int,
                   folder: Path) -> tuple[DictConfig, pd.DataFrame, list[Path]]:
    """Base (the run's model) vs ``task.compare_model`` (e.g. its aligned version) on the same corpus: the
    compared model's config and neurons, and the files of the comparison."""
    other = models.model_conf(cfg.task.compare_model, cfg.model)
    aligned, other_layers = identified(cfg, other, corpus)
    if other_layers != n_layers:
        raise NeuronXAError(f"task.compare_model has {other_layers} layers, the model {n_layers}: "
                            "base and aligned models must share an architecture")
    aligned_languages = ([corpus.resolve(code) for code in cfg.task.aligned_languages]
                         if cfg.task.aligned_languages else None)
    layers, per_language = tables.compare(base, aligned, corpus.languages, n_layers=n_layers,
                                          aligned_languages=aligned_languages)
    log.info(f"\n{cfg.task.compare_model} minus {model_name(cfg)}, per language:\n" + per_language.to_string(index=False))
    if aligned_languages is not None:
        by_set = per_language.groupby("in_aligned_set")[list(TYPES)].mean()
        by_set.index = by_set.index.map({True: "aligned languages", False: "other languages (spontaneous)"})
        log.info("\nmean change per language:\n" + by_set.round(1).to_string())
    log.info("\nper layer:\n" + layers.T.to_string())
    return other, aligned, [write_csv(layers, folder / "compare_by_layer.csv", index=True),
                            write_csv(per_language, folder / "compare_by_language.csv")]
