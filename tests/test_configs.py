"""Every config under conf/ composes: each option of each group, every experiment (the paper's included, with
their sweeps' values), and every model config resolves to a model spec."""

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import neuronxa.conf
from helpers import composed
from neuronxa.stage_one.models import spec_from_config

CONF = Path(neuronxa.conf.__file__).parent
GROUPS = sorted(p.name for p in CONF.iterdir() if any(p.glob("*.yaml")) and p.name not in ("hydra", "experiment"))
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_group_option_composes_and_resolves(group, option):
    needed = ["model.name_or_path=org/model"] if (group, option) == ("model", "hf") else []  # hf's mandatory id
    cfg = composed([f"{group}={option}", *needed])
    OmegaConf.resolve(cfg)
    if group == "model":
        assert spec_from_config(cfg.model).name


def sweep_points(cfg) -> list[list[str]]:
    """One override list per value of each swept parameter of an experiment."""
    parser = OverridesParser.create()
    points = []
    for key, values in (cfg.hydra.sweeper.get("params") or {}).items():
        for override in parser.parse_overrides([f"{key}={values}"]):
            points += [[f"{key}={value}"] for value in override.sweep_iterator()] if override.is_sweep_override() \
                else [[f"{key}={values}"]]
    return points or [[]]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_each_of_its_sweep_values(experiment):
    cfg = composed([f"experiment={experiment}"], hydra=True)
    for point in sweep_points(cfg):
        assert OmegaConf.to_container(composed([f"experiment={experiment}", *point]), resolve=True)
