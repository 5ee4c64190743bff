"""What identifies a model's weights without loading them (the cache key's part), and its config read from
``config.json`` alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.models.gguf import SOURCE_FILE, converted_folder
from neuronxa.stage_one.models.spec import ModelSpec, model_spec

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_SAMPLE = 1 << 20   # bytes read from the start, middle and end of each weight file for its fingerprint
ADAPTER_CONFIG = "adapter_config.json"


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
    source = folder / SOURCE_FILE
    if source.is_file():
        return json.loads(source.read_text())["sha256"]
    digest = hashlib.sha256()
    for name in ("config.json", ADAPTER_CONFIG):
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
            "download the model elsewhere and pass its folder instead of the hub id"
        ) from None


def local_path(spec: ModelSpec, models_dir: str | Path | None = None) -> Path | None:
    """The folder the model loads from, when it is local (an embedded model, converted in ``models_dir``, or a
    folder)."""
    if spec.gguf_package:
        return converted_folder(spec, models_dir)
    path = Path(spec.name_or_path).expanduser()
    return path if path.is_dir() else None


def identity(name_or_path: str | ModelSpec, revision: str | None = None, *,
             models_dir: str | Path | None = None) -> dict[str, str]:
    """What identifies the weights without loading them: the model id and a revision hash."""
    spec = model_spec(name_or_path, revision)
    folder = local_path(spec, models_dir)
    if folder is not None:
        return {"model": spec.name, "revision": _folder_fingerprint(folder)}
    if Path(spec.name_or_path).exists():
        raise NeuronXAError(f"model path {spec.name_or_path} is not a folder: pass a folder with config.json")
    return {"model": spec.name_or_path, "revision": _hub_commit(spec.name_or_path, spec.revision)}


def model_config(spec: ModelSpec, *, models_dir: str | Path | None = None) -> dict:
    """The model's config as a dict, from ``config.json`` alone where the model is local (no weights are loaded,
    and transformers is not even imported, so a job on a warm cache starts fast)."""
    folder = local_path(spec, models_dir)
    if folder is not None and not (folder / "config.json").is_file() and (folder / ADAPTER_CONFIG).is_file():
        return model_config(adapter_base(folder), models_dir=models_dir)   # a LoRA checkpoint: its base's config
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
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise NeuronXAError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path: cannot load the adapter")
    return ModelSpec(name=base, name_or_path=base)


def n_layers(config: dict) -> int | None:
    """The number of decoder layers a ``model_config`` names (None when it does not say)."""
    config = config.get("text_config") or config
    return next((int(config[key]) for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)
