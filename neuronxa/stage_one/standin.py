"""The offline stand-in benchmark, for machines with no network: the model's own per-language negative bits per
byte on held-out units of the corpus (units not scored). A language-modelling measure, not one of the paper's
benchmarks, labelled ``standin:neg_bits_per_byte`` wherever it appears; computed once per model and texts and kept
beside the state cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import pandas as pd

from neuronxa import files
from neuronxa.data.benchmarks import COLUMNS
from neuronxa.stage_one import models
from neuronxa.stage_one.models import ModelSpec

STANDIN = "standin:neg_bits_per_byte"
LIKELIHOOD = "rolling windows"  # part of the stand-in's cache key: values from truncated scoring are not reused

def standin(model, tokenizer, held_out: dict[str, list[str]], model_name: str, max_length: int = 512) -> pd.DataFrame:
    """The offline stand-in benchmark: per-language negative bits per byte on held-out units."""
    from neuronxa.stage_one.likelihood import negative_bits_per_byte   # torch: only when computed

    rows = [(model_name, STANDIN, language, negative_bits_per_byte(model, tokenizer, texts, max_length))
            for language, texts in held_out.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def cached_standin(spec: ModelSpec, held_out: dict[str, list[str]], cache_dir: str | Path, *, max_length: int = 512,
                   dtype: str = "auto", device: str = "auto", models_dir: str | Path | None = None) -> pd.DataFrame:
    """The stand-in benchmark for a model and held-out texts, computed once and kept beside the state cache
    (``models_dir``: where an embedded model is converted)."""
    key = [models.identity(spec, models_dir=models_dir), held_out, max_length, dtype, LIKELIHOOD]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    fs, root = fsspec.core.url_to_fs(str(cache_dir))
    path = f"{root}/standin/{digest}.csv"
    if fs.isfile(path):
        with fs.open(path) as file:
            return pd.read_csv(file)
    model, tokenizer = models.load(spec, dtype=dtype, device=device, models_dir=models_dir)
    results = standin(model, tokenizer, held_out, spec.name, max_length)
    fs.makedirs(f"{root}/standin", exist_ok=True)
    with files.staged(path, fs) as staging, fs.open(staging, "w") as file:
        results.to_csv(file, index=False)
    return results
