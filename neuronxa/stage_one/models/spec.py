"""What to load: a model's spec from its ``model`` config, from a config name (composed through Hydra, as the
command line composes it) or from a hub id or folder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a config name resolved to a hub id, a folder, or a GGUF inside a package."""

    name: str
    name_or_path: str
    revision: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None


def spec_from_config(conf) -> ModelSpec:
    """A spec from a ``model`` config group (a mapping with name, name_or_path, revision, gguf)."""
    gguf = conf.get("gguf") or {}
    name = str(conf.get("name") or conf.name_or_path)
    if name == "hf":
        name = str(conf.name_or_path)
    return ModelSpec(
        name=name,
        name_or_path=str(conf.name_or_path),
        revision=conf.get("revision"),
        gguf_package=gguf.get("package"),
        gguf_file=gguf.get("file"),
    )


@contextmanager
def _hydra_configs() -> Iterator[None]:
    """The project's Hydra configs ready to compose: those of the running Hydra app, else the packaged ones."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module("neuronxa.conf", version_base=None):
        yield


def composed(overrides: list[str] | None = None) -> DictConfig:
    """The project's config composed through Hydra with ``overrides``, defaults and interpolations included."""
    with _hydra_configs():
        return compose("config", overrides=list(overrides or []))


def named_config(name: str) -> DictConfig | None:
    """The composed ``model`` config called ``name`` (``model=gemma3_270m``), if the ``model`` group has one;
    ``hf`` (any hub id or folder) is no name."""
    if name == "hf" or "/" in name:
        return None
    with _hydra_configs():
        if name not in GlobalHydra.instance().config_loader().get_group_options("model"):
            return None
        return compose("config", overrides=[f"model={name}"]).model


def model_spec(name_or_path: str | ModelSpec, revision: str | None = None) -> ModelSpec:
    """Resolve a config name (e.g. ``gemma3_270m``) to its spec; anything else is a hub id or a folder."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    config = named_config(name_or_path)
    if config is not None:
        spec = spec_from_config(config)
        return ModelSpec(**{**spec.__dict__, "revision": revision or spec.revision})
    return ModelSpec(name=name_or_path, name_or_path=name_or_path, revision=revision)


def model_conf(name_or_path: str, like: DictConfig) -> DictConfig:
    """A ``model`` config for a config name (composed), or for a hub id or folder (``model=hf``, with the
    dtype and device of the config ``like``)."""
    config = named_config(name_or_path)
    if config is not None:
        return config
    return OmegaConf.merge(like, {"name": "hf", "name_or_path": name_or_path, "gguf": None, "revision": None})


def training_step(spec: ModelSpec) -> int | None:
    """The training step a checkpoint is at, from its revision (OLMo's ``stage1-step1000-tokens5B``) or its
    folder (the Trainer's ``checkpoint-1000``); None when neither says."""
    for text in (spec.revision or "", Path(spec.name_or_path).name):
        found = re.search(r"(?:^|[^a-z])(?:step|checkpoint)[-_]?(\d+)", text, re.IGNORECASE)
        if found:
            return int(found.group(1))
    return None
