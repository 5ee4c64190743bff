"""Loading a causal LM and its tokenizer (a config name, a hub id or a folder) on a device, in a dtype.

Resolving ``auto`` on a machine without a GPU imports no torch (a job whose states are all cached needs none)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.models.identity import local_path, model_config
from neuronxa.stage_one.models.spec import ModelSpec, model_spec

DTYPES = ("float32", "float16", "bfloat16")
# the device nodes of every GPU driver torch can use on Linux (NVIDIA, WSL, Jetson, ROCm): without any of them no
# GPU is visible, and ``auto`` is the CPU without asking torch
GPU_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/nvhost-ctrl-gpu", "/dev/kfd")
_MUSIC = ("a text-to-music model, whose causal LM is its decoder over audio codebook tokens (input_ids of shape "
          "(batch·codebooks, tokens)), not over text")
# causal LMs of the installed transformers whose structure the probes cannot represent, each with the reason
UNSUPPORTED = {**dict.fromkeys(["musicgen", "musicgen_decoder", "musicgen_melody", "musicgen_melody_decoder"], _MUSIC),
               **dict.fromkeys(["gemma4_assistant", "gemma4_unified_assistant"], "a draft model for speculative "
                               "decoding, which reads its backbone's key and value states (shared_kv_states) and "
                               "does not run on tokens alone")}


def refuse_unsupported(kind: str, config=None) -> None:
    """One line naming why, for a model type the tool cannot read (``UNSUPPORTED``), or a config it cannot read as
    it is (naming what to set in its config.json)."""
    if kind in UNSUPPORTED:
        raise NeuronXAError(f"model type {kind!r} is not supported: {UNSUPPORTED[kind]}")
    if config is None:
        return
    if kind == "xmod" and not getattr(config, "default_language", None):   # else its forward fails on a batch
        raise NeuronXAError("model type 'xmod' picks its language adapters by lang_ids, which are not passed: set "
                            "default_language in its config.json to one of its config's languages")
    if kind == "reformer" and "lsh" in config.attn_layers and (config.hash_seed is None or config.num_buckets is None):
        raise NeuronXAError("model type 'reformer' with LSH attention layers draws its hashing rotations anew each "
                            "forward pass unless hash_seed is set, and fixes its number of buckets from the first "
                            "sentence it sees unless num_buckets is set, so a sentence's states would change from "
                            "run to run: set hash_seed and num_buckets in its config.json")


def missing_package(kind: str, error: ImportError) -> NeuronXAError:
    """One line for a model whose modules need a package that is not installed (Gemma 3n's vision tower: timm),
    naming it and how to install it."""
    found = re.search(r"(\w+) requires the (\S+) library", str(error))
    if found is None:
        return NeuronXAError(f"model type {kind!r} cannot be built: {' '.join(str(error).split())}")
    return NeuronXAError(f"model type {kind!r} needs the package {found[2]} ({found[1]}), which is not installed: "
                         f"install it with `pip install {found[2]}`")


def dtype_name(dtype: str, device: str) -> str:
    """``auto`` is bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on the CPU."""
    if dtype == "auto":
        if device.startswith("cuda"):
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in DTYPES:
        raise NeuronXAError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return dtype


def resolve_dtype(dtype: str, device: str):
    """The ``torch.dtype`` of ``dtype_name``."""
    import torch

    return getattr(torch, dtype_name(dtype, device))


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    if sys.platform == "linux" and not any(os.path.exists(node) for node in GPU_NODES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _causal_lm_class(config: dict):
    """AutoModelForCausalLM, or the causal LM that ``architectures`` names in a config whose model type it maps to
    none: a multimodal type's text causal LM saved alone (Emu3ForCausalLM saves the type emu3_text_model)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    named = [name for name in config.get("architectures") or () if name.endswith("ForCausalLM")]
    if config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not named:
        return transformers.AutoModelForCausalLM
    return getattr(transformers, named[0], transformers.AutoModelForCausalLM)


def meta_model(spec: ModelSpec, *, models_dir: str | Path | None = None):
    """The causal LM built from its config on the meta device: its module tree without reading any weight."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(model_config(spec, models_dir=models_dir))
    built = _causal_lm_class(config)
    kind = config.pop("model_type")
    refuse_unsupported(kind)
    import torch

    try:
        with torch.device("meta"):
            config = AutoConfig.for_model(kind, **config)
            refuse_unsupported(kind, config)
            return built.from_config(config) if built is AutoModelForCausalLM else built(config)
    except (KeyError, ValueError) as error:
        raise NeuronXAError(f"model type {kind!r} is no causal LM that transformers can build: "
                            f"{str(error).splitlines()[0]}") from None
    except ImportError as error:   # before any weight loads
        raise missing_package(kind, error) from None


def load(
    name_or_path: str | ModelSpec,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    device_map: str | dict | None = None,
    models_dir: str | Path | None = None,
    offload_folder: str | None = None,
):
    """Load a causal LM and its tokenizer, in eval mode, from a config name, a hub id or a folder (an embedded
    model from its conversion in ``models_dir``).

    ``device_map`` (e.g. ``"auto"``) spreads a model larger than one device over the GPUs, the CPU and, with
    ``offload_folder``, the disk (accelerate's big-model inference)."""
    from transformers import AutoTokenizer

    spec = model_spec(name_or_path, revision)
    folder = local_path(spec, models_dir)
    causal_lm = _causal_lm_class(model_config(spec, models_dir=models_dir) if folder is not None else {})
    source = str(folder) if folder is not None else spec.name_or_path
    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if folder is None and spec.revision:
        kwargs["revision"] = spec.revision
    if device_map:
        kwargs.update(device_map=device_map, **({"offload_folder": offload_folder} if offload_folder else {}))
    try:
        model = causal_lm.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **({"revision": spec.revision} if "revision" in kwargs else {}))
    except OSError as error:
        raise NeuronXAError(
            f"cannot load model {source!r}: {str(error).splitlines()[0]} Without a network, download the model "
            "elsewhere and pass its folder instead of the hub id"
        ) from None
    if not device_map:
        model.to(device)
    model.eval()
    return model, tokenizer
