"""The pairwise task (``task=pairwise``): every corpus language as pivot against every other one. The layer-pooled
alignment scores of every ordered language pair with their intervals, as ``pairwise.csv``, a clustered
language × language heatmap per metric, and the MLflow run; no correlations with downstream results (they need
one pivot)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from neuronxa.stage_two import pairwise
from neuronxa.tasks import plots
from neuronxa.tasks.align import labelled, target_languages
from neuronxa.tasks.common import Logged, load_corpus, model_name, stage_one, tracked_run, write_csv

log = logging.getLogger(__name__)


def run(cfg: DictConfig, folder: Path) -> None:
    """The pairwise job for one config, in its MLflow run; the table and plots go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-{cfg.pooling.name}-{cfg.metric.name}", job=every_pair)


def every_pair(cfg: DictConfig, folder: Path) -> Logged:
    """Corpus, stage one, the pairwise scores; the table and plots in ``folder``; returns what to log."""
    chosen = pairwise.chosen_metrics(list(cfg.metric.names))
    corpus, _ = load_corpus(cfg.dataset, cfg.dataset.get("max_units"), cache_dir=cfg.cache.dir)
    corpus.validate(None)
    languages = target_languages(cfg, corpus)
    store = stage_one(cfg, cfg.model, corpus)
    pairs = pairwise.pairwise(store, chosen, cfg.pooling.name, languages=languages, layer_pool=cfg.score.layer_pool,
                              resamples=cfg.score.resamples, seed=cfg.score.seed, level=cfg.score.level)
    pairs = labelled(cfg, corpus, pairs)
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_csv(pairs, folder / "pairwise.csv"), *shown(cfg, pairs, folder / "plots")]
    log.info("\npairwise: no correlations with downstream results (they need one pivot).")
    log.info(f"\nrun folder: {folder}")
    values = {f"{metric}.pairwise_mean": float(group.value.mean()) for metric, group in pairs.groupby("metric")}
    tags = {"dataset": corpus.name, "pooling": cfg.pooling.name, "metric": cfg.metric.name, "cache": store.url(),
            "pivot": "all"}
    return Logged(tags, values, [], files=files, corpora={"evaluation": corpus})


def shown(cfg: DictConfig, pairs: pd.DataFrame, folder: Path) -> list[Path]:
    """Each metric's pivot × target table, printed, and its clustered heatmap in ``folder`` (``score.plots``)."""
    made = []
    with pd.option_context("display.width", 250, "display.max_columns", 60, "display.precision", 2):
        for metric in pairs.metric.unique():
            log.info(f"\n{metric}, every language as pivot (rows) against every target (columns), "
                  f"{cfg.score.layer_pool} over layers, n = {int(pairs.n.iloc[0])} shared units:")
            log.info(pairwise.matrix(pairs, metric).to_string(float_format="{:.2f}".format))
            if cfg.score.plots != "off":   # drawn here, also for background: a heatmap per metric
                made.append(plots.clustered_heatmap(pairwise.matrix(pairs, metric), folder / f"{metric}_pairwise.png",
                                                    f"{metric} · {model_name(cfg)} · {pairs.dataset.iloc[0]}"))
    return made
