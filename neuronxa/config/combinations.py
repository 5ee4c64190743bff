"""The rules between options, per task: what the training task needs of its data and its library objects, what
the language-neurons task can import, what the every-pair task scores."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from neuronxa.config.rules import ConfigError
from neuronxa.config.schema import ALIGNMENT_METRICS

UDHR_ARTICLES = 30   # the preamble is article 0


def check(cfg: DictConfig) -> None:
    """The cross-option rules of the chosen task."""
    {"training": training, "neurons": neurons, "pairwise": pairwise}.get(cfg.task.name, lambda _: None)(cfg)


def pairwise(cfg: DictConfig) -> None:
    if not set(cfg.metric.names) & set(ALIGNMENT_METRICS):
        raise ConfigError("metric.names", cfg.metric.names, f"task=pairwise scores {', '.join(ALIGNMENT_METRICS)}; "
                          "add one of them (e.g. metric=alignment)")


def neurons(cfg: DictConfig) -> None:
    task = cfg.task
    if task.prefix_counts is not None and len(task.prefix_counts) != len(task.counts or ()):
        raise ConfigError("task.prefix_counts", task.prefix_counts, f"{len(task.prefix_counts)} files for "
                          f"{len(task.counts or ())} counts files; give one prefix file per task.counts file")
    if task.compare_model and (task.counts or task.mask):
        raise ConfigError("task.compare_model", task.compare_model, "needs the model's own counts; drop "
                          "task.counts and task.mask, or task.compare_model")


def training(cfg: DictConfig) -> None:
    task = cfg.task
    if cfg.dataset.name != "udhr":
        raise ConfigError("dataset", cfg.dataset.name, "task=training trains on UDHR paragraphs; use dataset=udhr")
    articles(task.train_articles, task.eval_articles)
    overlap = sorted(set(task.trained) & set(task.untrained))
    if not task.trained or overlap:
        raise ConfigError("task.trained", task.trained, "needs at least one language, none of them in task.untrained "
                          f"(both: {', '.join(overlap) or 'none'}); list each language once")
    lora_fields(OmegaConf.to_container(task.lora))
    trainer_fields(OmegaConf.to_container(task.trainer))


def articles(train: list[int], evaluation: list[int]) -> None:
    """Two [first, last] article ranges, training before evaluation, within the UDHR's articles, apart."""
    for option, pair in (("task.train_articles", train), ("task.eval_articles", evaluation)):
        if len(pair) != 2:
            raise ConfigError(option, pair, "not a range; give [first,last]")
    (first, last), (eval_first, eval_last) = train, evaluation
    if not 0 <= first <= last < eval_first <= eval_last <= UDHR_ARTICLES:
        raise ConfigError("task.train_articles", train, f"must come before task.eval_articles {list(evaluation)} "
                          f"within articles 0-{UDHR_ARTICLES} (0: the preamble), without overlap; e.g. [0,20] and "
                          "[21,30]")


def lora_fields(lora: dict) -> None:
    """The adapter's options, as peft.LoraConfig takes them (peft is imported only for task=training)."""
    from peft import LoraConfig

    try:
        LoraConfig(**lora)
    except (TypeError, ValueError) as error:
        raise ConfigError("task.lora", lora, f"{error}; give peft.LoraConfig's fields (r, lora_alpha, "
                          "lora_dropout, target_modules, ...)") from None


def trainer_fields(trainer: dict) -> None:
    """The trainer's options must be transformers.TrainingArguments' fields (imported only for task=training)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    known = {field.name for field in fields(TrainingArguments)}
    unknown = sorted(set(trainer) - known)
    if unknown:
        raise ConfigError(f"task.trainer.{unknown[0]}", trainer[unknown[0]], "not a field of transformers' "
                          "TrainingArguments; use its own names (max_steps, per_device_train_batch_size, "
                          "learning_rate, ...)")
