"""The one validation step after composition: mandatory values, each option's rule (``rules``), then the
options that must go together (``combinations``)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from neuronxa.config import combinations
from neuronxa.config.rules import COMMON, PER_TASK, ConfigError, Rule, one_of
from neuronxa.config.schema import TASKS

MISSING_HINTS = {"model.name_or_path": "give model.name_or_path=ORG/NAME (a hub id) or a model folder",
                 "dataset.path": "give dataset.path=/path/to/corpus",
                 "benchmark.path": "give benchmark.path=/path/to/results"}


def check_resolvable(cfg: DictConfig) -> None:
    """No mandatory value (``???``) left unset, and every interpolation resolves."""
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if not missing:
            OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(error.full_key or "config", "...", f"cannot be resolved ({reason}); fix the "
                          "interpolation or give a plain value") from None
    if missing:
        hint = MISSING_HINTS.get(missing[0], f"give {missing[0]}=... on the command line")
        raise ConfigError(missing[0], "???", f"a value is required; {hint}")


_ABSENT = object()


def check_option(cfg: DictConfig, option: str, rule: Rule) -> None:
    """``rule`` on the option's value, when the composed config has the option."""
    value = OmegaConf.select(cfg, option, default=_ABSENT)
    problem = None if value is _ABSENT else rule(value)
    if problem:
        raise ConfigError(option, value, problem)


def check_keys(node: DictConfig, prefix: str = "") -> None:
    """No key beyond its schema's fields (``+key=value`` adds one that nothing reads)."""
    for key in node:
        child, option = node._get_node(key), f"{prefix}{key}"
        schema = OmegaConf.get_type(node)
        if is_dataclass(schema) and key not in {field.name for field in fields(schema)}:
            raise ConfigError(option, OmegaConf.select(node, str(key)), "no such option; see the options with "
                              "--cfg job")
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
            check_keys(child, f"{option}.")


def validate(cfg: DictConfig) -> None:
    """Every rule of the composed config, in one step: mandatory values, each option's range or allowed values,
    then the options that must go together (see ``combinations``). The first broken rule raises."""
    check_resolvable(cfg)
    check_keys(cfg)
    check_option(cfg, "task.name", one_of(*TASKS))
    for option, rule in {**COMMON, **PER_TASK.get(cfg.task.name, {})}.items():
        check_option(cfg, option, rule)
    combinations.check(cfg)
