"""The command line's config step, before Hydra starts the first job: every job of the run is composed as Hydra
will compose it (``-m`` sweeps and ``hydra.mode=MULTIRUN`` experiments expanded as Hydra's BasicSweeper does),
validated, and its world checked; Hydra's and OmegaConf's composition errors become one ``ConfigError``."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from hydra import initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from neuronxa.config.rules import ConfigError
from neuronxa.config.validation import validate
from neuronxa.config.world import check_world

T = TypeVar("T")
CONFIG_MODULE, CONFIG_NAME = "neuronxa.conf", "config"
INSPECTION = ("cfg", "info")                       # flags that show the config: composed, not validated
UNCHECKED = ("help", "hydra_help", "shell_completion", "config_path", "config_dir", "experimental_rerun")
TYPES = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "ListConfig": "a list such as "
         "[a,b]", "DictConfig": "a mapping such as {key: value}", "valid bool": "true or false",
         "not Optional": "a value (this option cannot be null)"}


@dataclass(frozen=True)
class Checked:
    """What the check found of the run: its ``hydra.mode`` (None: as the command line's ``-m`` says)."""
    mode: RunMode | None


def check_command_line(argv: list[str]) -> Checked | None:
    """Compose and validate every job that ``argv`` asks for; raise ``ConfigError`` at the first mistake. Returns
    what it found of the run (None where nothing was composed)."""
    args, _ = get_args_parser().parse_known_args(argv)
    if any(getattr(args, flag, None) for flag in UNCHECKED):
        return None
    name = args.config_name or CONFIG_NAME
    with loader() as load:
        master = composition(lambda: load(name, args.overrides, RunMode.MULTIRUN))
        mode = master.hydra.mode
        if args.multirun or mode == RunMode.MULTIRUN:
            configs = (composition(lambda: load(name, job, RunMode.RUN)) for job in job_overrides(master, args))
        else:   # one job: the config just composed, unless a sweep is given without -m (Hydra's error then)
            swept = any(override.is_sweep_override() for override in parsed(args.overrides))
            configs = [composition(lambda: load(name, args.overrides, RunMode.RUN)) if swept else master]
        jobs = [without_hydra(cfg) for cfg in configs]
    if not any(getattr(args, flag, None) for flag in INSPECTION):
        for cfg in jobs:      # every job's options first: a mistake answers before the world is looked at
            validate(cfg)
        for cfg in jobs:
            check_world(cfg)
    return Checked(mode)


@contextmanager
def known_mode(checked: Checked | None) -> Iterator[None]:
    """Compositions Hydra repeats of what the check has done, skipped within this: it composes the whole config
    once more only to read ``hydra.mode`` (``Hydra.get_mode``, the check's first composition), and BasicSweeper
    composes every job of a batch before launching it only to fail early (``Sweeper.validate_batch_is_legal``,
    which it inherits: Hydra loads its plugins' classes anew), the check's composition of each job; the launcher
    still composes each job it runs."""
    if checked is None:
        yield
        return
    originals = Hydra.get_mode, Sweeper.validate_batch_is_legal
    Hydra.get_mode = lambda self, config_name, overrides: checked.mode
    Sweeper.validate_batch_is_legal = lambda self, batch: None if type(self).__name__ == "BasicSweeper" \
        else originals[1](self, batch)   # another sweeper's jobs are not the ones the check composed
    try:
        yield
    finally:
        Hydra.get_mode, Sweeper.validate_batch_is_legal = originals


@contextmanager
def loader() -> Iterator[Callable[[str, list[str], RunMode], DictConfig]]:
    """Hydra's config loader over the package's configs (the one Hydra itself uses for the run)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            config_loader = GlobalHydra.instance().config_loader()
            yield lambda name, overrides, mode: config_loader.load_configuration(
                name, list(overrides), run_mode=mode, validate_sweep_overrides=mode == RunMode.RUN)
    finally:
        GlobalHydra.instance().clear()


def job_overrides(master: DictConfig, args: argparse.Namespace) -> list[list[str]]:
    """Each job's overrides, as BasicSweeper expands the sweeper's params and the command line's sweeps."""
    given = parsed(args.overrides)
    hydra_overrides = [override.input_line for override in given if override.is_hydra_override()]
    task = [override.input_line for override in given if not override.is_hydra_override()]
    params = [f"{key}={value}" for key, value in (master.hydra.sweeper.get("params") or {}).items()]
    swept = parsed(params + task)
    batches = composition(lambda: BasicSweeper.split_arguments(swept, None))
    return [hydra_overrides + job for batch in batches for job in batch]


def parsed(overrides: list[str]) -> list:
    """The overrides as Hydra's parser reads them."""
    return composition(lambda: OverridesParser.create().parse_overrides(overrides))


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A job's config as its task sees it: without Hydra's own node."""
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def composition(step: Callable[[], T]) -> T:
    """``step()``, with Hydra's and OmegaConf's errors turned into one ``ConfigError``."""
    try:
        return step()
    except MissingConfigException as error:
        raise unknown_option(error) from None
    except OverrideParseException as error:
        key, _, value = (error.override or "override=...").partition("=")
        raise ConfigError(key, value, f"cannot be read ({error.message.splitlines()[0]}); write key=value, "
                          "key=[a,b] or key=a,b with -m") from None
    except (HydraException, OmegaConfBaseException) as error:
        raise composition_error(error) from None


def unknown_option(error: MissingConfigException) -> ConfigError:
    """``pooling=median``: the group's options instead of Hydra's search-path dump."""
    group, _, option = str(error.missing_cfg_file or "").rpartition("/")
    options = [name for name in error.options or () if not name.endswith("schema")]
    if not group:
        return ConfigError("config", option, f"{str(error).splitlines()[0]}; check the config name")
    return ConfigError(group, option, f"no such {group} config; choose one of {', '.join(options)}")


def composition_error(error: Exception) -> ConfigError:
    """An unknown key, a wrong type or an unparsable value, named by its key (an OmegaConf error carries it)."""
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    message = str(error)
    ambiguous = re.search(r"Ambiguous value for argument '(.+?)=(.*)'", message)
    if ambiguous:
        return ConfigError(ambiguous[1], ambiguous[2], "several values in one run; add -m to sweep them, or "
                           "write [a,b] for a list")
    appended = re.search(r"use \+(\S+?)=(.*)$", message, re.MULTILINE)
    if appended:
        return ConfigError(appended[1], appended[2], "no such option; see the options with --cfg job")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = str(cause.msg if hasattr(cause, "msg") else cause).splitlines()[0]
        expected = next((words for name, words in TYPES.items() if name in reason), "a value of the right type")
        return ConfigError(cause.full_key, getattr(cause, "value", "..."), f"wrong type ({reason}); give {expected}")
    return ConfigError("config", "...", f"{message.splitlines()[0]}; see --help")
