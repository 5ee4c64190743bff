"""The steering task: language neurons identified as ``task=neurons`` does, then greedy continuations of
held-out source-language prompts under each intervention on them (and on same-size random neurons, the
control), with the share identified as each target language, repetition and target-language perplexity."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from neuronxa.data.corpus import ParallelCorpus, held_out_texts
from neuronxa.errors import NeuronXAError
from neuronxa.neurons import steering
from neuronxa.neurons.deactivation import by_layer_indices, random_like
from neuronxa.neurons.identify import in_mask
from neuronxa.neurons.intervention import mean_activations
from neuronxa.neurons.steering import Intervention, NeuronSet, applied, continuations, design, measured
from neuronxa.stage_one import models
from neuronxa.stage_one.likelihood import perplexity
from neuronxa.stage_one.models import spec_from_config
from neuronxa.stage_one.probes import layer_widths
from neuronxa.stage_two.uncertainty import wilson
from neuronxa.tasks import plots
from neuronxa.tasks.common import Logged, model_name, tracked_run, write_csv
from neuronxa.tasks.neurons import check_shape, identified, task_corpus

log = logging.getLogger(__name__)
KEYS = ["target", "neurons", "mode", "strength"]


def run(cfg: DictConfig, folder: Path) -> None:
    """The steering job, in its MLflow run; tables and the plot go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-steer-{cfg.task.source}", job=steer)


def prompts_of(texts: list[str], count: int, words: int) -> list[str]:
    """Up to ``count`` prompts: the first ``words`` words of each sentence of the texts (in order) that has more."""
    sentences = [s for text in texts for s in re.split(r"(?<=[.!?;:])\s+|\n+", text)]
    found = [" ".join(s.split()[:words]) for s in sentences if len(s.split()) > words]
    if not found:
        raise NeuronXAError(f"no held-out sentence has more than {words} words: lower task.prompt_words")
    return found[:count]


def as_frame(chosen: dict[int, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([(layer, n) for layer, ns in chosen.items() for n in ns], columns=["layer", "neuron"])


def neuron_sets(found: pd.DataFrame, languages: list[str], *, source: str, target: str,
                means: dict[str, np.ndarray], random_source: pd.DataFrame, width: int,
                rng: np.random.Generator) -> dict[str, NeuronSet]:
    """The language neurons of source and target, and random ones of the same size per layer, with their values."""
    patch = np.mean([means[language] for language in means], axis=0)
    own_source = in_mask(found, languages.index(source))[["layer", "neuron"]]
    own_target = in_mask(found, languages.index(target))[["layer", "neuron"]]
    random_target = as_frame(random_like(by_layer_indices(own_target), width, rng))
    value = lambda array, frame: array[frame.layer.to_numpy(int), frame.neuron.to_numpy(int)]
    return {name: NeuronSet(src, tgt, value(patch, src), value(means[target], tgt))
            for name, src, tgt in (("language", own_source, own_target), ("random", random_source, random_target))}


def steer(cfg: DictConfig, folder: Path) -> Logged:
    """Identify, load the model, then generate and measure under every intervention for every target."""
    task, started = cfg.task, time.monotonic()
    corpus, rest = task_corpus(cfg)
    source, targets = corpus.resolve(task.source), [corpus.resolve(t) for t in task.targets]
    unknown = [t for t in targets if steering.identifier_label(t) is None]
    if unknown:
        log.info(f"{', '.join(unknown)}: {steering.UNKNOWN}; their share is left empty")
    found, n_layers = identified(cfg, cfg.model, corpus)
    model, tokenizer = models.load(spec_from_config(cfg.model), dtype=cfg.model.dtype, device=cfg.model.device,
                                   models_dir=cfg.paths.models)
    check_shape(found, n_layers, model)
    prompts = prompts_of(rest.texts(source), task.prompts, task.prompt_words)
    log.info(f"{len(prompts)} prompts of {source}, e.g. {prompts[0]!r}; {task.new_tokens} new tokens each")
    means = {language: mean_activations(model, tokenizer, corpus.texts(language)[: task.mean_units],
                                        batch_size=cfg.extract.batch_size, max_length=cfg.extract.max_length)
             for language in dict.fromkeys([source, *targets])}
    texts = held_out_texts(corpus, rest, task.eval_units)
    rng, width = np.random.default_rng(task.seed), layer_widths(model)
    own_source = by_layer_indices(in_mask(found, corpus.languages.index(source)))
    random_source = as_frame(random_like(own_source, width, rng))
    cells = design(list(task.source_modes), list(task.target_modes), list(task.strengths),
                   combine=list(task.combine))
    generated, rows, made = {}, [], []
    for target in targets:
        sets = neuron_sets(found, corpus.languages, source=source, target=target, means=means,
                           random_source=random_source, width=width, rng=rng)
        log.info(f"{source}: {len(sets['language'].source)} neurons, {target}: {len(sets['language'].target)} "
                 "(each with a random set of the same size per layer)")
        target_made, target_rows = under_each(model, tokenizer, cells, sets, target=target, prompts=prompts,
                                              texts=texts[target], new_tokens=task.new_tokens,
                                              max_length=cfg.extract.max_length, generated=generated)
        made += target_made
        rows += target_rows
        log.info(f"{target}: {len(cells)} interventions done ({time.monotonic() - started:.0f} s)")
    return report(cfg, folder, pd.concat(made, ignore_index=True), pd.DataFrame(rows),
                  source=source, corpus=corpus, seconds=time.monotonic() - started)


def under_each(model, tokenizer, cells: list[Intervention], sets: dict[str, NeuronSet], *, target: str,
               prompts: list[str], texts: list[str], new_tokens: int, max_length: int,
               generated: dict) -> tuple[list[pd.DataFrame], list[dict]]:
    """Continuations (measured) and the target text's perplexity under each cell; continuations that do not
    depend on the target (no target mode) are generated once and kept in ``generated`` for the next target."""
    made, rows = [], []
    for cell in cells:
        key = (cell.neurons, cell.mode, cell.strength if cell.target != "none" else 0.0,
               target if cell.target != "none" else "")
        with applied(model, cell, sets):
            if key not in generated:
                generated[key] = continuations(model, tokenizer, prompts, new_tokens)
            ppl = perplexity(model, tokenizer, texts, max_length)
        frame = measured(generated[key], tokenizer, target).assign(prompt=prompts)
        made.append(frame.assign(target=target, neurons=cell.neurons, mode=cell.mode, strength=cell.strength))
        rows.append({"target": target, "neurons": cell.neurons, "mode": cell.mode, "strength": cell.strength,
                     "perplexity": ppl})
    return made, rows


def summary(made: pd.DataFrame, perplexities: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per (target, neurons, mode, strength): continuations, share identified as the target with its Wilson
    interval, mean repeated 3-grams, and the target text's perplexity."""
    grouped = made.groupby(KEYS, dropna=False, sort=False)
    table = grouped.agg(n=("is_target", "size"), share=("is_target", "mean"),
                        repeated_3grams=("repeated_3grams", "mean")).reset_index()
    bounds = [wilson(share, n, level) if share == share else (np.nan, np.nan)
              for share, n in zip(table.share, table.n)]
    table["low"], table["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    table = table.merge(perplexities, on=KEYS, how="left")
    return table[[*KEYS, "n", "share", "low", "high", "repeated_3grams", "perplexity"]]


def report(cfg: DictConfig, folder: Path, made: pd.DataFrame, perplexities: pd.DataFrame, *, source: str,
           corpus: ParallelCorpus, seconds: float) -> Logged:
    """Print and write the table, the continuations and the plot; the MLflow values."""
    table = summary(made, perplexities, cfg.score.level)
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        log.info("\n" + table.round(3).to_string(index=False))
    for row in made.drop_duplicates(["mode", "neurons", "strength", "target"]).head(6).itertuples():
        log.info(f"{row.target} {row.neurons} {row.mode} {row.strength:g}: {row.prompt} ▸ {row.continuation!r}")
    log.info(f"steering took {seconds:.0f} s; run folder: {folder}")
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    title = f"{model_name(cfg)} · {corpus.name} · from {source}"
    files = [write_csv(table, folder / "steering.csv"),
             write_csv(made[[*KEYS, "prompt", "continuation", "identified", "is_target", "repeated_3grams"]],
                       folder / "continuations.csv"),
             plots.steering(table, folder / "plots" / "steering.png", title)]
    values = {f"share.{r.target}.{r.neurons}.{r.mode.replace('+', '_and_')}.{r.strength:g}": r.share
              for r in table.itertuples() if r.share == r.share}
    values["seconds"] = seconds
    return Logged({"dataset": corpus.name, "source": source, "targets": " ".join(table.target.unique())},
                  values, files=files, corpora={"evaluation": corpus})
