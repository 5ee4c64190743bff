"""``--help`` as Hydra prints it, from one composition. Hydra's own help lists each config group through a fresh
deep copy of its config repository (about 90 of them here: most of the seconds ``--help`` took); this lists
them from the one repository that the composition already holds."""

from __future__ import annotations

import argparse
import copy
import string

from hydra import initialize_config_module
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from neuronxa.config.jobs import composition


def groups(repository, parent: str = "") -> list[str]:
    """Every config group that holds configs, nested ones included (``hydra/launcher``)."""
    found = []
    for child in repository.get_group_options(parent, ObjectType.GROUP):
        name = f"{parent}/{child}" if parent else child
        if repository.get_group_options(name, ObjectType.CONFIG):
            found.append(name)
        found.extend(groups(repository, name))
    return found


def listing(repository, hydra_groups: bool) -> str:
    """Hydra's ``$APP_CONFIG_GROUPS`` (or ``$HYDRA_CONFIG_GROUPS``): one line per group with its options."""
    chosen = [name for name in groups(repository) if (name == "hydra" or name.startswith("hydra/")) == hydra_groups]
    return "".join(f"{name}: {', '.join(sorted(repository.get_group_options(name, ObjectType.CONFIG)))}\n"
                   for name in sorted(chosen))


def app_help(args: argparse.Namespace, module: str, name: str, *, job: str) -> str:
    """The text ``--help`` shows for these arguments: Hydra's help template filled as Hydra fills it (``job``:
    the name Hydra gives the job, its script's)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(module, version_base="1.3"):
            config_loader = GlobalHydra.instance().config_loader()
            cfg = composition(lambda: config_loader.load_configuration(name, list(args.overrides),
                                                                     run_mode=RunMode.RUN))
            with open_dict(cfg):
                cfg.hydra.job.name = job
            template, clean = string.Template(cfg.hydra.help.template), copy.deepcopy(cfg)
            with open_dict(clean):
                clean.pop("hydra")
            return template.substitute(FLAGS_HELP=Hydra.format_args_help(get_args_parser()),
                                       HYDRA_CONFIG_GROUPS=listing(config_loader.repository, True),
                                       APP_CONFIG_GROUPS=listing(config_loader.repository, False),
                                       CONFIG=OmegaConf.to_yaml(clean, resolve=args.resolve))
    finally:
        GlobalHydra.instance().clear()
