"""The cache of pooled states: one chunked, compressed Zarr store per forward-pass key.

A store's key holds only what changes the forward pass (model and revision, corpus and unit selection, max
length, probe sites, dtype, BOS handling). Inside, each language is a group written whole into a staging
folder and moved into place in one rename, with its metadata, so an interrupted write never looks complete:

    {root}/{model}__{corpus}__{digest}/            attrs: key, library versions
        {language}/                                attrs: ids, fingerprint, chunks, store digest, complete
            n_tokens                               (units,) int32
            {nas|nav|hidden}/{weighted|mean|last}  (layers, units, width), one chunk file per layer (c.{layer}.0.0)
            routing/{weighted|mean|last}           mixture-of-experts models: routing weights (layers, units, E)

Where layers differ in width (mixture-of-experts models, whose MoE layers hold E·I expert neurons and whose dense
layers fewer; routing, which dense layers lack), an array is zero-padded to its widest layer and its attribute
``widths`` lists each layer's width: a layer is read back at its own width, and the padding (zeros, like the
unrouted experts' pooled states) costs almost nothing once compressed.

Every chunk carries a CRC32C checksum and each entry records its chunk count and its store's key digest, so
a truncated, missing or misplaced chunk is detected and the entry recomputed, never used.

The root is a local folder or any fsspec URL (``s3://bucket/cache``, ``gs://…``, ``memory://…``). Locally the
staged entry moves in with one atomic rename; object stores have no rename, so there the move is a copy, and an
entry caught half-copied fails its chunk count and is recomputed.
Open it in a notebook with ``zarr.open_group(path, mode="r")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec, Crc32cCodec

from neuronxa import files
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.chunk_io import read_layers, write_layers

FORMAT_VERSION = 2  # 2: chunk files c.{layer}.0.0 beside each array's zarr.json (one listing per array)
FLOAT16_MAX = float(np.finfo(np.float16).max)
_ROOT_LOCK = threading.Lock()
# LZ4 with bit shuffling, then a CRC32C checksum per chunk: a truncated or altered chunk fails on read. On the
# embedded model's float16 states LZ4-5 encodes about 4.5 times as fast as zstd-3 for 1.8% more bytes (1.48 a
# value instead of 1.46), so the writes take less from the forward pass they run beside.
CODECS = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec())


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in ("neuronxa", "torch", "transformers", "zarr", "numpy")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:60]


class StateStore:
    """Pooled states of one forward-pass key, written and read one language (and one layer) at a time."""

    def __init__(self, root: str | Path, key: dict) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(root))
        self.local = isinstance(self.fs, LocalFileSystem)
        self._relative = self.local and not os.path.isabs(str(root))  # shown as given: outputs/cache/…
        self.key = {"format": FORMAT_VERSION, **key}
        self.digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()
        self.path = f"{self.root}/{_slug(str(key['model']))}__{_slug(str(key['corpus']))}__{self.digest[:16]}"
        self._verified: dict[str, zarr.Group] = {}  # entries checked once, then read without re-checking
        self._intact: set[str] = set()   # entries whose status found key and chunks in order

    def url(self, path: str | None = None) -> str:
        """A path of this store's filesystem as zarr and users open it (a plain path for local folders)."""
        path = self.path if path is None else path
        if self.local:
            return os.path.relpath(path) if self._relative else path
        return self.fs.unstrip_protocol(path)

    def lock_dir(self) -> Path:
        """Where jobs sharing this cache take their per-language locks: beside a local cache; for a remote one,
        in this machine's temporary folder (jobs on other machines may then compute an entry twice, and the
        last complete copy wins)."""
        if self.local:
            return Path(self.root) / ".locks"
        return Path(tempfile.gettempdir()) / "neuronxa-locks" / hashlib.sha256(self.url().encode()).hexdigest()[:16]

    def _ensure_root(self) -> None:
        with _ROOT_LOCK:   # languages are written side by side
            if self._root_matches():
                return
            self.fs.makedirs(self.path, exist_ok=True)
            group = zarr.open_group(self.url(), mode="a")
            group.attrs.update({"key": self.key, "digest": self.digest, "versions": library_versions()})

    def _json(self, path: str) -> dict | None:
        """A zarr.json's attributes; None when the file is missing; ``{"unreadable": True}`` when it is garbled."""
        try:
            return json.loads(self.fs.cat_file(path)).get("attributes", {})
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"unreadable": True}

    def _attrs(self, language: str) -> dict | None:
        attrs = self._json(f"{self.path}/{language}/zarr.json")
        return {"complete": True, **attrs} if attrs and attrs.get("unreadable") else attrs

    def _root_matches(self) -> bool:
        """The store's recorded key is the key it is filed under (no misplaced or edited metadata)."""
        attrs = self._json(f"{self.path}/zarr.json") or {}
        return attrs.get("digest") == self.digest and attrs.get("key") == self.key

    def _chunks_present(self, language: str, chunks: dict[str, int]) -> bool:
        """Every array of the entry has all the chunk files it was written with (one listing of the entry)."""
        entry = f"{self.path}/{language}/"
        found = Counter(folder[len(entry):] for folder, _, name in (p.rpartition("/") for p in self.fs.find(entry))
                        if name.startswith("c."))
        return all(found[name] == expected for name, expected in chunks.items())

    def status(self, language: str, fingerprint: str) -> str:
        """``complete`` (reusable), ``stale`` (written from other text), ``corrupt`` (metadata that does not
        match its key, or missing chunks) or ``missing``."""
        attrs = self._attrs(language)
        if attrs is None or not attrs.get("complete"):
            return "missing"
        if (attrs.get("unreadable") or attrs.get("store_digest") != self.digest or not self._root_matches()
                or not self._chunks_present(language, attrs.get("chunks", {}))):
            return "corrupt"
        self._intact.add(language)
        return "complete" if attrs.get("fingerprint") == fingerprint else "stale"

    def languages(self) -> list[str]:
        """Languages with a complete entry."""
        if not self.fs.isdir(self.path):
            return []
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(self.path, detail=False)]
        return sorted(name for name in names if (self._attrs(name) or {}).get("complete"))

    def write(self, language: str, states: dict, ids: list[str], fingerprint: str, **metadata) -> None:
        """Write one language's pooled states atomically: staged, marked complete, then renamed into place.

        ``states`` maps kind -> pooling -> (layers, units, width) array, or a list of (units, width of the layer)
        arrays where widths differ; ``n_tokens`` (per unit) is required.
        """
        arrays = {f"{kind}/{pooling}": array for kind, by_pooling in states.items()
                  for pooling, array in by_pooling.items()}
        self.write_arrays(language, {"n_tokens": np.asarray(metadata.pop("n_tokens"), dtype=np.int32), **arrays},
                          ids, fingerprint, **metadata)

    def write_arrays(self, language: str, arrays: dict[str, np.ndarray], ids: list[str], fingerprint: str,
                     **metadata) -> None:
        """Write named arrays of one language atomically (one chunk per index of the first axis)."""
        self._ensure_root()
        self._verified.pop(language, None)
        self._intact.discard(language)
        try:
            with files.staged(f"{self.path}/{language}", self.fs, f"{self.root}/.staging") as staging:
                self.fs.makedirs(staging, exist_ok=True)
                group = zarr.open_group(self.url(staging), mode="w")
                chunks = {name: self._write_array(group, name, array) for name, array in arrays.items()}
                group.attrs.update({"ids": list(ids), "fingerprint": fingerprint, **metadata, "chunks": chunks,
                                    "store_digest": self.digest, "complete": True})
        except OSError as error:
            raise NeuronXAError(
                f"could not write the cache entry for {language} under {self.url(self.root)}: "
                f"{error.strerror or error}. Nothing was marked complete; free space (or fix permissions) and rerun"
            ) from None

    @staticmethod
    def _write_array(group: zarr.Group, name: str, array: np.ndarray) -> int:
        """Floats in half precision where every value fits (float32 where one would overflow); integers as
        they are. 3-D arrays are chunked one layer at a time, for stage two's per-layer reads."""
        widths = [layer.shape[-1] for layer in array] if isinstance(array, list) else None
        data = np.asarray(array) if widths is None else np.stack(
            [np.pad(layer, [(0, 0), (0, max(widths) - layer.shape[-1])]) for layer in array])
        if np.issubdtype(data.dtype, np.floating) and data.dtype != np.float16:   # float16: converted already
            fits = np.isfinite(data).all() and float(np.abs(data).max(initial=0.0)) < FLOAT16_MAX
            data = data.astype(np.float16 if fits else np.float32)
        chunks = (1, *data.shape[1:]) if data.ndim == 3 else data.shape
        stored = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=CODECS,
                                    chunk_key_encoding={"name": "default", "separator": "."},
                                    config={"write_empty_chunks": True})   # an all-zero layer is data too
        write_layers(stored, data)
        if widths is not None:
            stored.attrs["widths"] = widths
        return int(np.prod([-(-size // chunk) for size, chunk in zip(data.shape, chunks)])) if data.size else 0

    def _fingerprint(self, language: str) -> str:
        return (self._attrs(language) or {}).get("fingerprint", "")

    def _group(self, language: str) -> zarr.Group:
        """The entry's group, verified (key, completeness, chunks) on first use by this store object, unless
        ``status`` has just verified it."""
        if language not in self._verified:
            if language not in self._intact and self.status(language, self._fingerprint(language)) != "complete":
                raise NeuronXAError(f"no complete cached states for {language} in {self.url()}: run stage one first")
            self._verified[language] = zarr.open_group(self.url(f"{self.path}/{language}"), mode="r")
        return self._verified[language]

    def read(self, language: str, kind: str, pooling: str, layer: int | slice = slice(None)) -> np.ndarray:
        """Pooled states as float32: (layers, units, width), or (units, width of the layer) for one layer (the
        widest layer's width, zero-padded, for several layers of differing widths); read lazily."""
        array = self._array(language, f"{kind}/{pooling}")
        states = self._load(language, array, layer).astype(np.float32)
        widths = array.attrs.get("widths")
        return states[:, :widths[layer]] if widths and isinstance(layer, int) else states

    def layers(self, language: str, kind: str, pooling: str) -> list[np.ndarray]:
        """Every layer's pooled states as float32 (units, width of the layer), from one read of the array."""
        array = self._array(language, f"{kind}/{pooling}")
        states = self._load(language, array).astype(np.float32)
        widths = array.attrs.get("widths") or [states.shape[-1]] * len(states)
        return [layer[:, :width] for layer, width in zip(states, widths)]

    def widths(self, language: str, kind: str = "nas", pooling: str = "weighted") -> list[int] | None:
        """Each layer's width where layers differ in width; None where all have the array's width."""
        return self._group(language)[f"{kind}/{pooling}"].attrs.get("widths")

    def _array(self, language: str, name: str) -> zarr.Array:
        """One array of a verified entry; a clear error where the entry lacks it."""
        try:
            return self._group(language)[name]
        except KeyError:
            raise NeuronXAError(f"cache entry {language} in {self.url()} holds no {name}: "
                                + ("routing exists for mixture-of-experts models only" if name.startswith("routing")
                                   else "rerun stage one to compute it")) from None

    def _load(self, language: str, array: zarr.Array, index=...) -> np.ndarray:
        """Read part of an array; a chunk failing its checksum is a clear error, never data."""
        try:
            return read_layers(array, index)
        except (ValueError, RuntimeError) as error:
            raise NeuronXAError(f"cache entry {language} in {self.url()} is corrupt ({str(error)[:80]}): "
                                "rerun stage one to recompute it") from None

    def ids(self, language: str) -> list[str]:
        return list(self._group(language).attrs["ids"])

    def n_tokens(self, language: str) -> np.ndarray:
        """Tokens per unit (after truncation, BOS included)."""
        return self.array(language, "n_tokens")

    def n_tokens_total(self, language: str) -> int:
        """Tokens the entry was computed from (counted tokens for activation counts)."""
        meta = self.metadata(language)
        return int(meta["n_tokens_total"]) if "n_tokens_total" in meta else int(self.n_tokens(language).sum())

    def array(self, language: str, name: str) -> np.ndarray:
        """A stored array as it was written (e.g. ``n_tokens``, ``active``)."""
        return self._load(language, self._array(language, name))

    def metadata(self, language: str) -> dict:
        return dict(self._group(language).attrs)

    def shape(self, language: str, kind: str = "nas", pooling: str = "weighted") -> tuple[int, ...]:
        """(layers, units, width) of one stored array."""
        return tuple(self._group(language)[f"{kind}/{pooling}"].shape)

    def n_layers(self, language: str, kind: str = "nas", pooling: str = "weighted") -> int:
        return self.shape(language, kind, pooling)[0]
