"""The rules that types cannot say (ranges, allowed values, options that go together), checked in one step
right after composition: ``validate(cfg)`` raises a ``ConfigError`` naming the option, its value, what is wrong
and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from neuronxa.config.schema import METHODS, METRICS, POOLINGS
from neuronxa.errors import NeuronXAError

Rule = Callable[[Any], "str | None"]   # None when the value is fine, else "<what is wrong>; <what is allowed>"


class ConfigError(NeuronXAError):
    """One option's bad value: ``<option>=<value>: <what is wrong>; <what is allowed or what to do>``."""

    def __init__(self, option: str, value: Any, problem: str) -> None:
        super().__init__(f"{option}={shown(value)}: {problem}")
        self.option = option


def shown(value: Any) -> str:
    """A value as it is written on the command line (null, [a,b], an empty string as nothing)."""
    if value is None:
        return "null"
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ",".join(map(shown, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def at_least(minimum: int, null: str = "") -> Rule:
    """A whole number of at least ``minimum``; null allowed when ``null`` says what it means."""
    def rule(value: Any) -> str | None:
        if value is None:
            return None if null else f"a value is required; give a whole number of at least {minimum}"
        if value < minimum:
            return f"below {minimum}; give a whole number of at least {minimum}" + (f" (or null: {null})" if null else "")
        return None
    return rule


def within(low: float, high: float, *, closed: str = "", null: str = "") -> Rule:
    """A number between ``low`` and ``high``, open at both ends unless ``closed`` names "low" and/or "high"."""
    brackets = ("[" if "low" in closed else "(") + f"{low:g}, {high:g}" + ("]" if "high" in closed else ")")

    def rule(value: Any) -> str | None:
        if value is None and null:
            return None
        above = value >= low if "low" in closed else value > low
        below = value <= high if "high" in closed else value < high
        if value is None or not (above and below):
            return f"out of range; give a number in {brackets}" + (f" (or null: {null})" if null else "")
        return None
    return rule


def one_of(*allowed: str) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value in allowed else f"not a known value; choose {' or '.join(allowed)}"
    return rule


def each_of(*allowed: str) -> Rule:
    """A non-empty list whose every item is one of ``allowed``."""
    def rule(value: Any) -> str | None:
        unknown = [item for item in value or () if item not in allowed]
        if not value or unknown:
            return f"{'unknown: ' + ', '.join(map(str, unknown)) if unknown else 'empty'}; choose from " \
                   f"{', '.join(allowed)}"
        return None
    return rule


def positive_numbers(value: Any) -> str | None:
    """A non-empty list of numbers above 0."""
    if not value or any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in value):
        return "give a non-empty list of numbers above 0, e.g. [1,2,4]"
    return None


def text(what: str) -> Rule:
    """Non-empty text (an empty ``option=`` is a mistake, not a default)."""
    def rule(value: Any) -> str | None:
        if value is not None and str(value).strip():
            return None
        return f"{'not given' if value is None else 'empty'}; give {what}"
    return rule


def device(value: Any) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(value)):
        return None
    return "not a known device; choose auto, cpu, cuda, cuda:N or mps"


def pivot(value: Any) -> str | None:
    if str(value) == "all":
        return "every ordered pair is its own task now; use task=pairwise (and leave score.pivot a language)"
    return text("a language code such as eng_Latn")(value)


def non_empty_languages(value: Any) -> str | None:
    return "empty; give languages such as [eng_Latn,fra_Latn] (or null: every one the corpus holds)" \
        if value is not None and not len(value) else None


COMMON: dict[str, Rule] = {
    "paths.outputs": text("a folder for runs, the cache and the tracking store"),
    "dataset.max_units": at_least(2, "every unit; alignment compares units with each other"),
    "dataset.languages": non_empty_languages,
    "dataset.unit": one_of("article", "paragraph"),
    "dataset.split": one_of("dev", "devtest"),
    "dataset.path": text("the corpus's file or folder (dataset.path=/path/to/corpus)"),
    "model.name_or_path": text("a hub id such as ORG/NAME or a model folder"),
    "model.dtype": one_of("auto", "float32", "float16", "bfloat16"),
    "model.device": device,
    "pooling.name": one_of(*POOLINGS),
    "metric.names": each_of(*METRICS),
    "benchmark.source": one_of("none", "standin", "csv", "lm_eval"),
    "benchmark.units": at_least(1, "every held-out unit"),
    "benchmark.path": text("the results' file or folder (benchmark.path=/path/to/results)"),
    "extract.batch_size": at_least(1),
    "extract.batch_tokens": at_least(1, "batches of extract.batch_size sentences"),
    "extract.max_length": at_least(2),
    "extract.group_units": at_least(1),
    "extract.layers": at_least(1, "every layer"),
    "score.pivot": pivot,
    "score.languages": non_empty_languages,
    "score.layer_pool": one_of("mean", "max"),
    "score.plots": one_of("inline", "background", "off"),
    "score.tsne_layer": at_least(0, "the middle layer"),
    "score.level": within(0, 1),
    "score.resamples": at_least(0),
    "score.bootstrap": at_least(0),
    "score.permutations": at_least(1),
    "score.seed": at_least(0),
    "cache.dir": text("a folder (or an fsspec URL) for the cached states"),
    "tracking.uri": text("an MLflow tracking URI such as sqlite:///outputs/mlflow.db"),
    "tracking.artifacts": text("a folder for the runs' files"),
    "tracking.experiment": text("an experiment name"),
}

NEURONS: dict[str, Rule] = {
    "task.languages": non_empty_languages,
    "task.method": one_of(*METHODS),
    "task.top_rate": within(0, 1, closed="high"),
    "task.bar_rate": within(0, 1, closed="high"),
    "task.filter_rate": within(0, 1, closed="low high", null="the method's own"),
    "task.lam": within(0, float("inf"), closed="low", null="searched"),
    "task.eval_units": at_least(1),
    "task.seed": at_least(0),
}

TRAINING: dict[str, Rule] = {
    "task.unit": one_of("article", "paragraph"),
    "task.every": at_least(1),
    "task.max_length": at_least(2),
    "task.translate_units": at_least(1),
    "task.max_new_tokens": at_least(1),
    "task.metrics": each_of(*METRICS),
    "task.seed": at_least(0),
    "task.merged_dir": text("a folder for the merged model"),
    "task.lora.r": at_least(1),
    "task.trainer.max_steps": at_least(1),
    "task.trainer.per_device_train_batch_size": at_least(1),
}

STEER: dict[str, Rule] = {
    **{option: NEURONS[option] for option in ("task.languages", "task.method", "task.top_rate", "task.bar_rate",
                                              "task.filter_rate", "task.lam", "task.eval_units", "task.seed")},
    "task.source": text("the prompts' language, e.g. eng_Latn"),
    "task.prompts": at_least(1),
    "task.prompt_words": at_least(1),
    "task.new_tokens": at_least(1),
    "task.source_modes": each_of("zero", "patch"),
    "task.target_modes": each_of("set", "scale"),
    "task.combine": lambda value: each_of("zero", "patch")(value) if value else None,
    "task.strengths": positive_numbers,
    "task.mean_units": at_least(1),
}

PER_TASK = {"neurons": NEURONS, "training": TRAINING, "steer": STEER}

