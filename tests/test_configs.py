"""Every config under conf/ composes: each option of each group, typed by its schema, every experiment (the
paper's included, with their sweeps' values) passing the rules, and every model config resolves to a model
spec."""

from dataclasses import is_dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import neuronxa.conf
from helpers import composed
from neuronxa.config import schema
from neuronxa.config.validation import validate
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


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_group_option_is_typed_by_its_schema(group, option):
    needed = ["model.name_or_path=org/model"] if (group, option) == ("model", "hf") else []
    node = composed([f"{group}={option}", *needed])[group]
    assert is_dataclass(OmegaConf.get_type(node)), f"conf/{group}/{option}.yaml names no schema in its defaults"


PAPER_DATA = {"FLORES_DIR": "flores", "TATOEBA_DIR": "tatoeba", "BENCHMARKS_CSV": "results.csv",
              "LM_EVAL_DIR": "lm_eval"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_job_of_every_experiment_passes_the_rules(experiment, monkeypatch):
    for variable, value in PAPER_DATA.items():     # the paper's data are read from these variables
        monkeypatch.setenv(variable, value)
    cfg = composed([f"experiment={experiment}"], hydra=True)
    for point in sweep_points(cfg):
        validate(composed([f"experiment={experiment}", *point]))


def test_the_configs_names_are_the_librarys():
    from neuronxa.neurons.identify import METHODS
    from neuronxa.stage_one.pooling import POOLINGS
    from neuronxa.stage_two.registry import METRICS

    assert (schema.POOLINGS, schema.METHODS) == (POOLINGS, METHODS)
    alignment = {name for name, metric in METRICS.items() if metric.kind == "alignment"}
    assert set(schema.METRICS) == set(METRICS) and set(schema.ALIGNMENT_METRICS) == alignment


def test_every_task_name_leads_to_a_run_function():
    for name, target in schema.TASKS.items():
        module, _, function = target.partition(":")
        if name != "pairwise" or find_spec(module):      # the every-pair task module may come later
            assert callable(getattr(import_module(module), function)), name
