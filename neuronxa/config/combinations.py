"""The rules between options, per task: what the training task needs of its data and its library objects, what
the language-neurons task can import, what the every-pair task scores, which languages steering uses."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from neuronxa.config.rules import ConfigError, shown
from neuronxa.config.schema import ALIGNMENT_METRICS

UDHR_ARTICLES = 30   # the preamble is article 0
TYPES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def check(cfg: DictConfig) -> None:
    """The cross-option rules of the chosen task."""
    checks = {"training": training, "neurons": neurons, "pairwise": pairwise, "steer": steer}
    checks.get(cfg.task.name, lambda _: None)(cfg)


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


def steer(cfg: DictConfig) -> None:
    """The source and every target are among the languages the neurons are identified in, and differ."""
    task = cfg.task
    languages = task.languages if task.languages is not None else cfg.dataset.get("languages")
    if not task.targets:
        raise ConfigError("task.targets", task.targets, "empty; give target languages such as [fra_Latn,zho_Hans]")
    for option, codes in (("task.source", [task.source]), ("task.targets", task.targets)):
        missing = [code for code in codes if languages is not None and code not in languages]
        if missing:
            raise ConfigError(option, codes[0] if option == "task.source" else codes, f"{', '.join(missing)} not "
                              f"among the languages the neurons are identified in; add it to task.languages")
    if task.source in task.targets:
        raise ConfigError("task.targets", task.targets, f"holds the source {task.source}; steer to other languages")


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
        raise ConfigError("task.train_articles", train, f"must come before task.eval_articles {shown(evaluation)} "
                          f"within articles 0-{UDHR_ARTICLES} (0: the preamble), without overlap; e.g. [0,20] and "
                          "[21,30]")


def lora_fields(lora: dict) -> None:
    """The adapter's options, as peft.LoraConfig takes them (peft is imported only for task=training)."""
    from peft import LoraConfig

    library_fields("task.lora", lora, LoraConfig, examples="r, lora_alpha, lora_dropout, target_modules")
    try:
        LoraConfig(**lora)
    except (TypeError, ValueError) as error:
        raise ConfigError("task.lora", lora, f"{error}; give values peft.LoraConfig takes") from None


def trainer_fields(trainer: dict) -> None:
    """The trainer's options, as transformers.TrainingArguments takes them (imported only for task=training)."""
    from transformers import TrainingArguments

    library_fields("task.trainer", trainer, TrainingArguments,
                   examples="max_steps, per_device_train_batch_size, learning_rate")


def library_fields(option: str, given: dict, kind: type, *, examples: str) -> None:
    """Each key of ``given`` is a field of the dataclass ``kind``, and each value has the type of the field's
    default where that is a number, a flag or text."""
    known = {field.name: field.default for field in fields(kind)}
    for key, value in given.items():
        if key not in known:
            raise ConfigError(f"{option}.{key}", value, f"not a field of {kind.__module__.split('.')[0]}."
                              f"{kind.__name__}; use its own names ({examples}, ...)")
        expected = type(known[key])
        accepted = (int, float) if expected is float else expected
        if expected in TYPES and (not isinstance(value, accepted) or isinstance(value, bool) != (expected is bool)):
            raise ConfigError(f"{option}.{key}", value, f"wrong type; give {TYPES[expected]} (as "
                              f"{kind.__name__} takes it)")
