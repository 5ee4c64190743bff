"""Embedded models: a GGUF file shipped inside a PyPI package, converted once to a local safetensors folder
(about a minute) that every later load reads (seconds)."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from filelock import FileLock

from neuronxa import files
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.models.spec import ModelSpec, composed

log = logging.getLogger(__name__)

SOURCE_FILE = "neuronxa_source.json"   # in a converted folder: the GGUF it came from and its SHA-256


def gguf_path(spec: ModelSpec, models_dir: Path) -> Path:
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


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def converted_folder(spec: ModelSpec, models_dir: str | Path | None) -> Path:
    """The safetensors copy of an embedded GGUF model in ``models_dir`` (by default the configured
    ``paths.models``), made once (under a lock, written atomically)."""
    models_dir = Path(composed().paths.models if models_dir is None else models_dir)
    target = models_dir / spec.name
    if (target / SOURCE_FILE).is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{spec.name}.lock")):
        if (target / SOURCE_FILE).is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = gguf_path(spec, models_dir)
        log.info(f"converting {gguf.name} to safetensors once (about a minute) -> {target}")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        source = {"gguf": gguf.name, "package": spec.gguf_package, "sha256": sha256(gguf)}
        save_model(model, tokenizer, target, notes={SOURCE_FILE: source})
    return target


def save_model(model, tokenizer, target: Path, *, notes: dict[str, dict] | None = None) -> Path:
    """Save a model and its tokenizer as a folder (safetensors), atomically; ``notes`` are JSON files added."""
    with files.staged(str(target)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, note in (notes or {}).items():
            (Path(staging) / name).write_text(json.dumps(note, indent=1))
    return target
