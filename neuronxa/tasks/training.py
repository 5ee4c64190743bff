"""The training task (``task=training``): a LoRA translation fine-tune of the model on UDHR pairs
(xx → English), with alignment (trained and untrained languages) and chrF scored at every checkpoint, their
correlation across checkpoints, and the merged model saved for the base-vs-aligned neuron comparison."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.data.udhr import read_udhr, udhr_article
from neuronxa.stage_one import models
from neuronxa.stage_two.uncertainty import pearson, spearman
from neuronxa.tasks import plots
from neuronxa.tasks.common import Logged, model_name, tracked_run, write_csv
from neuronxa.training.callbacks import AlignmentCallback, TranslationCallback
from neuronxa.training.finetune import fine_tune, lora_model, translation_examples
from neuronxa.training.translation import load_comet

log = logging.getLogger(__name__)


def run(cfg: DictConfig, folder: Path) -> None:
    """The training job, in its MLflow run; checkpoints, tables and plots go to ``folder``."""
    tracked_run(cfg, folder, f"{cfg.model.name}-training", job=aligned_by_training)


def split_corpus(cfg: DictConfig) -> tuple[ParallelCorpus, ParallelCorpus]:
    """The UDHR units (``task.unit``) of the pivot, trained and untrained languages: (training units, evaluation
    units)."""
    task = cfg.task
    languages = [cfg.score.pivot, *task.trained, *task.untrained]
    corpus = read_udhr(cfg.dataset.path, languages, unit=task.unit)
    corpus.validate(corpus.resolve(cfg.score.pivot))
    (first, last), (eval_first, eval_last) = task.train_articles, task.eval_articles
    return (corpus.where(lambda unit: first <= udhr_article(unit) <= last),
            corpus.where(lambda unit: eval_first <= udhr_article(unit) <= eval_last))


def translation_pairs(train: ParallelCorpus, trained: list[str], pivot: str) -> list[tuple[str, str]]:
    """(source, English) pairs of every training unit of the trained languages."""
    return [(train.units[language][unit], train.units[pivot][unit])
            for language in trained for unit in train.shared_ids(pivot, language)]


def callbacks(cfg: DictConfig, tokenizer, evaluation: ParallelCorpus, *,
              comet) -> tuple[AlignmentCallback, TranslationCallback]:
    """The alignment callback over every language's evaluation units, and the translation callback over the
    first ``task.translate_units`` of them."""
    task, pivot = cfg.task, evaluation.resolve(cfg.score.pivot)
    alignment = AlignmentCallback(
        tokenizer, {language: evaluation.texts(language) for language in evaluation.languages}, pivot,
        metrics=list(task.metrics), every=task.every, pooling=cfg.pooling.name, layer_pool=cfg.score.layer_pool,
        batch_size=cfg.extract.batch_size, max_length=cfg.extract.max_length)
    languages = [evaluation.resolve(code) for code in (task.translate_languages or
                                                       [*task.trained, *task.untrained])]
    units = evaluation.ids(pivot)[: task.translate_units]
    translation = TranslationCallback(
        tokenizer, {language: [evaluation.units[language][unit] for unit in units] for language in languages},
        [evaluation.units[pivot][unit] for unit in units], every=task.every, max_new_tokens=task.max_new_tokens,
        comet=comet)
    return alignment, translation


def aligned_by_training(cfg: DictConfig, folder: Path) -> Logged:
    """Fine-tune with LoRA, scoring alignment and translation at every checkpoint; save the merged model."""
    comet, comet_note = load_comet(cfg.task.comet_checkpoint)
    train, evaluation = split_corpus(cfg)
    pivot = evaluation.resolve(cfg.score.pivot)
    trained = [train.resolve(code) for code in cfg.task.trained]
    pairs = translation_pairs(train, trained, pivot)
    log.info(f"training pairs: {len(pairs)} ({', '.join(trained)} → {pivot}; articles "
          f"{cfg.task.train_articles[0]}-{cfg.task.train_articles[1]}); evaluation: {len(evaluation.ids(pivot))} "
          f"units of articles {cfg.task.eval_articles[0]}-{cfg.task.eval_articles[1]} in "
          f"{len(evaluation.languages) - 1} languages; {comet_note}")
    model, tokenizer = models.load(models.spec_from_config(cfg.model), dtype=cfg.model.dtype, device=cfg.model.device,
                                   models_dir=cfg.paths.models)
    alignment, translation = callbacks(cfg, tokenizer, evaluation, comet=comet)
    trainer = fine_tune(
        lora_model(model, seed=cfg.task.seed, **OmegaConf.to_container(cfg.task.lora, resolve=True)), tokenizer,
        translation_examples(tokenizer, pairs, cfg.task.max_length), folder=folder / "checkpoints",
        every=cfg.task.every, seed=cfg.task.seed, callbacks=[alignment, translation],
        **OmegaConf.to_container(cfg.task.trainer, resolve=True))
    merged = models.save_model(trainer.model.merge_and_unload(), tokenizer, Path(cfg.task.merged_dir))
    logged = report(cfg, folder, trained, pooled=alignment.pooled(), translation=translation,
                    loss=loss_by_step(trainer.state.log_history), merged=merged)
    return replace(logged, corpora={"training": train, "evaluation": evaluation})


def loss_by_step(log_history: list[dict]) -> pd.DataFrame:
    """The training loss the Trainer logged at each step."""
    rows = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    return pd.DataFrame(rows, columns=["step", "loss"])


def correlations_by_checkpoint(pooled: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """Pearson and Spearman correlation across checkpoints between each alignment score and each translation
    score: per language, and over every (language, checkpoint) point together (``all``)."""
    joined = pooled.merge(quality.rename(columns={"metric": "quality", "value": "quality_value"}),
                          on=["step", "language"])
    rows = []
    for (metric, measure), group in joined.groupby(["metric", "quality"], sort=False):
        for language, points in [*group.groupby("language", sort=False), ("all", group)]:
            x, y = points.score.to_numpy(float), points.quality_value.to_numpy(float)
            rows.append({"metric": metric, "quality": measure, "language": language, "n": len(points),
                         "pearson_r": float(pearson(x, y)), "spearman_rho": float(spearman(x, y))})
    return pd.DataFrame(rows, columns=["metric", "quality", "language", "n", "pearson_r", "spearman_rho"])


def report(cfg: DictConfig, folder: Path, trained: list[str], *, pooled: pd.DataFrame,
           translation: TranslationCallback, loss: pd.DataFrame, merged: Path) -> Logged:
    """Print, write and plot the alignment and translation scores per checkpoint and their correlations."""
    role = {language: "trained" if language in trained else "untrained" for language in pooled.language.unique()}
    quality = translation.history
    correlations = correlations_by_checkpoint(pooled, quality)
    print_tables(pooled, quality, correlations, role=role)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{model_name(cfg)} · LoRA on {', '.join(trained)} → English"
    files = [write_csv(pooled.assign(role=pooled.language.map(role)), folder / "alignment_by_step.csv"),
             write_csv(quality, folder / "translation_by_step.csv"), write_csv(loss, folder / "loss.csv"),
             write_csv(correlations, folder / "correlations.csv"), write_translations(translation, folder),
             plots.over_steps(pooled, role, folder / "plots" / "alignment_by_step.png", title=title),
             plots.against_quality(pooled, quality, folder / "plots" / "alignment_vs_chrf.png", title=title)]
    log.info(f"\nmerged model: {merged} (compare its neurons: make align-demo, or python -m neuronxa.run "
          f"task=neurons task.compare_model={merged})\nrun folder: {folder}")
    series = [("loss", row.loss, int(row.step)) for row in loss.itertuples()]
    series += [(f"{row.metric}.{row.language}", row.score, int(row.step)) for row in pooled.itertuples()]
    series += [(f"{row.metric}.{row.language}", row.value, int(row.step)) for row in quality.itertuples()]
    values = {f"pearson.{row.metric}.{row.quality}.{row.language}": row.pearson_r for row in correlations.itertuples()}
    return Logged({"merged_model": str(merged), "trained": " ".join(trained)}, values, series, files=files)


def by_step(rows: pd.DataFrame, role: dict[str, str]) -> pd.DataFrame:
    """One metric's layer-pooled scores as a language × step table, trained languages first, each row named
    with its role."""
    table = rows.pivot(index="language", columns="step", values="score")
    table = table.loc[sorted(table.index, key=lambda language: (role[language], language))]
    table.index = [f"{language} ({role[language]})" for language in table.index]
    return table


def print_tables(pooled: pd.DataFrame, quality: pd.DataFrame, correlations: pd.DataFrame, *,
                 role: dict[str, str]) -> None:
    """The alignment and translation scores by training step, and their correlations."""
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.precision", 3):
        for metric, rows in pooled.groupby("metric", sort=False):
            log.info(f"\n{metric} (layer-pooled) by training step:\n{by_step(rows, role).to_string()}")
        for measure, rows in quality.groupby("metric", sort=False):
            log.info(f"\n{measure} of greedy translations into English by training step:")
            log.info(rows.pivot(index="language", columns="step", values="value").round(1).to_string())
        log.info("\ncorrelation between alignment and translation quality across checkpoints:")
        log.info(correlations.to_string(index=False))


def write_translations(translation: TranslationCallback, folder: Path) -> Path:
    """Every translation made, with its step, language, source and reference."""
    rows = [{"step": step, "language": language, "source": source, "reference": reference, "translation": text}
            for (step, language), texts in translation.translations.items()
            for source, reference, text in zip(translation.sources[language], translation.references, texts)]
    return write_csv(pd.DataFrame(rows), folder / "translations.csv")

