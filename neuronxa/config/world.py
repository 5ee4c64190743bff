"""The checks that need the world, run once before any model loads: the corpus, results and count files exist,
a model folder holds a model, the device is there, the cache and the tracking store can be used, and no option is
given that the chosen model would ignore. Each failure is a ``ConfigError`` naming the option."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from omegaconf import DictConfig

from neuronxa.config.rules import ConfigError
from neuronxa.errors import NeuronXAError, check_creatable

FILE_CORPORA = ("tsv", "jsonl")          # the other corpora are folders
MODEL_FILES = ("config.json", "adapter_config.json")


def check_world(cfg: DictConfig) -> None:
    """Every check of the world that the config ``cfg`` (validated) relies on."""
    dataset = cfg.dataset
    if dataset.path is not None:
        existing(dataset.path, "dataset.path", folder=dataset.name not in FILE_CORPORA)
    model(cfg.model)
    if cfg.benchmark.get("path") is not None:
        paths = [cfg.benchmark.path] if isinstance(cfg.benchmark.path, str) else list(cfg.benchmark.path)
        for path in paths:
            existing(path, "benchmark.path", folder=cfg.benchmark.source == "lm_eval" and Path(path).is_dir())
    task_files(cfg.task)
    local_folder(cfg.cache.dir, "cache.dir")
    if cfg.tracking.enabled:
        tracking(cfg.tracking)


def existing(path: str, option: str, *, folder: bool) -> None:
    """``path`` must exist, and be a folder (``folder``) or a file."""
    found = Path(path).expanduser()
    kind = "folder" if folder else "file"
    if not found.exists():
        raise ConfigError(option, path, f"no such {kind}; give an existing {kind}")
    if found.is_dir() != folder:
        raise ConfigError(option, path, f"is a {'file' if folder else 'folder'}; give a {kind}")


def local_folder(path: str, option: str) -> None:
    """A local folder the tool will create must be creatable and writable (a URL is left to its filesystem)."""
    if "://" in str(path):
        return
    reworded(option, path, lambda: check_creatable(path, option))


def reworded(option: str, value: object, check: Callable[[], None]) -> None:
    """Run a library check, turning its error into one naming the option and its value."""
    try:
        check()
    except NeuronXAError as error:
        raise ConfigError(option, value, str(error).removeprefix(f"{option}: ")) from None


def model(conf: DictConfig) -> None:
    """A packaged model: its package is installed and nothing it ignores is set; a folder: it holds a model;
    a GPU device: it is there."""
    if conf.gguf is not None:
        if conf.revision is not None:
            raise ConfigError("model.revision", conf.revision, f"ignored by model={conf.name}, whose weights come "
                              f"from the package {conf.gguf.package}; drop it, or use model=hf "
                              "model.name_or_path=ORG/NAME model.revision=...")
        if find_spec(conf.gguf.package) is None:
            raise ConfigError("model", conf.name, f"needs the package {conf.gguf.package}; run `make install`")
    elif looks_local(conf.name_or_path):
        existing(conf.name_or_path, "model.name_or_path", folder=True)
        if not any((Path(conf.name_or_path).expanduser() / name).is_file() for name in MODEL_FILES):
            raise ConfigError("model.name_or_path", conf.name_or_path, f"holds neither {' nor '.join(MODEL_FILES)}; "
                              "give a folder saved with save_pretrained, or a hub id ORG/NAME")
    if str(conf.device).startswith("cuda"):
        cuda(str(conf.device))
    if conf.offload_folder is not None:
        local_folder(conf.offload_folder, "model.offload_folder")


def looks_local(name_or_path: str) -> bool:
    """A path rather than a hub id: it exists, or it is written as a path (/, ./, ../, ~)."""
    return Path(name_or_path).expanduser().exists() or bool(re.match(r"[/~.]", name_or_path))


def cuda(device: str) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError("model.device", device, f"{'no GPU is visible' if not count else f'{count} GPU(s) visible'}"
                          "; use model.device=cpu (or auto), or run where the GPU is")


def task_files(task: DictConfig) -> None:
    """The files a task reads: published counts and masks, a model to compare with, a COMET checkpoint."""
    for option in ("counts", "prefix_counts"):
        for path in task.get(option) or ():
            existing(path, f"task.{option}", folder=False)
    for option in ("mask", "comet_checkpoint"):
        if task.get(option):
            existing(task[option], f"task.{option}", folder=False)
    if task.get("compare_model") and looks_local(task.compare_model):
        existing(task.compare_model, "task.compare_model", folder=True)
    if task.get("merged_dir"):
        local_folder(task.merged_dir, "task.merged_dir")


def tracking(conf: DictConfig) -> None:
    """The tracking store answers (a server) or can be opened or created (a local SQLite file)."""
    from neuronxa.tasks.tracking import check_reachable

    reworded("tracking.uri", conf.uri, lambda: check_reachable(conf.uri))
    local_folder(conf.artifacts, "tracking.artifacts")
