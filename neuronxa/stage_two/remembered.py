"""Stage two's scores kept beside a local cache, so that a job scoring the same states in the same way (a rerun,
a sweep run again, another benchmark, interval level or plot setting) reads them instead of recomputing them.

A kept result is found by everything its numbers depend on: the store's key, each entry's metadata file as
written (a recomputed entry is a new file), the pooling, metrics, pivot, targets, half-samples, seed, and the
source of stage two's modules (a changed metric is a new result). It is written atomically and read back
exactly; a result that cannot be read is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from neuronxa import files
from neuronxa.stage_two import metrics, registry, scoring, uncertainty
from neuronxa.stage_two.scoring import Resampled

FORMAT = 1
COLUMNS = {"metric": str, "pivot": str, "language": str, "layer": np.int64, "value": np.float64, "n": np.int64}


def _source_digest() -> str:
    """The source of the modules that compute the scores."""
    digest = hashlib.sha256()
    for module in (metrics, registry, scoring, uncertainty):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def kept_path(store, wanted: list[str], pooling: str, *, pivot: str, languages: list[str] | None,
              resamples: int, seed: int) -> Path | None:
    """Where the result of these arguments is kept; None where the store is not a local folder (or an entry
    is missing: ``score`` then names what is wrong)."""
    if not getattr(store, "local", False):
        return None
    targets = scoring.check_targets(store, pivot, languages)
    stamps = {}
    for language in [pivot, *targets]:
        written = os.stat(f"{store.path}/{language}/zarr.json")
        stamps[language] = [written.st_mtime_ns, written.st_size]
    key = {"format": FORMAT, "store": store.digest, "entries": stamps, "pooling": pooling, "metrics": wanted,
           "pivot": pivot, "targets": targets, "resamples": resamples, "seed": seed, "source": _source_digest()}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(store.root) / ".scores" / f"{name}.npz"


def _saved(path: Path, scores: pd.DataFrame, resampled: Resampled) -> None:
    """Write a result atomically: the table's columns, then each (metric, language)'s half-sample values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"column:{name}": scores[name].to_numpy(dtype=kind) for name, kind in COLUMNS.items()}
    arrays["halves"] = np.array(list(resampled), dtype=str).reshape(-1, 2)   # (metric, language) per entry
    arrays.update({f"halves{index}": values for index, values in enumerate(resampled.values())})
    with files.staged(str(path)) as staging, open(staging, "wb") as file:
        np.savez(file, **arrays)


def _loaded(path: Path) -> tuple[pd.DataFrame, Resampled] | None:
    """A kept result as ``score`` returned it; None where it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as kept:
            scores = pd.DataFrame({name: kept[f"column:{name}"].astype(kind) if kind is not str
                                   else kept[f"column:{name}"].astype(object) for name, kind in COLUMNS.items()})
            halves = {(str(metric), str(language)): kept[f"halves{index}"]
                      for index, (metric, language) in enumerate(kept["halves"])}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return scores, halves


def score(store, wanted: list[str], pooling: str, *, pivot: str, languages: list[str] | None = None,
          resamples: int = 0, seed: int = 0, keep: bool = True) -> tuple[pd.DataFrame, Resampled]:
    """``scoring.score``, read from a kept result where there is one (``keep``: keep and reuse results)."""
    path = kept_path(store, wanted, pooling, pivot=pivot, languages=languages, resamples=resamples, seed=seed) \
        if keep else None
    kept = _loaded(path) if path is not None and path.exists() else None
    if kept is not None:
        return kept
    scores, resampled = scoring.score(store, wanted, pooling, pivot=pivot, languages=languages,
                                      resamples=resamples, seed=seed)
    if path is not None:
        try:
            _saved(path, scores, resampled)
        except OSError:   # a read-only or full cache: the scores stand, they are only not kept
            pass
    return scores, resampled
