"""The Zarr cache: round trips, precision, lazy reads, atomic entries, staleness."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.store import StateStore

KEY = {"model": "tiny", "revision": "abc", "corpus": "toy", "max_length": 8}


def states(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"nas": {"weighted": rng.random((3, 5, 7)).astype(np.float32)},
            "hidden": {"weighted": (scale * rng.standard_normal((3, 5, 4))).astype(np.float32)}}


def write(store, language="eng_Latn", data=None, fingerprint="f1"):
    store.write(language, data or states(), [f"u{i}" for i in range(5)], fingerprint,
                n_tokens=np.arange(5), n_truncated=1)


def test_round_trip_and_lazy_layer_read(tmp_path):
    store = StateStore(tmp_path, KEY)
    data = states()
    write(store, data=data)
    np.testing.assert_allclose(store.read("eng_Latn", "nas", "weighted"), data["nas"]["weighted"], atol=1e-3)
    np.testing.assert_allclose(store.read("eng_Latn", "nas", "weighted", 2), data["nas"]["weighted"][2], atol=1e-3)
    assert store.ids("eng_Latn") == ["u0", "u1", "u2", "u3", "u4"]
    assert store.n_tokens("eng_Latn").tolist() == [0, 1, 2, 3, 4]
    array = zarr.open_group(Path(store.path) / "eng_Latn", mode="r")["nas/weighted"]
    assert array.dtype == np.float16 and array.chunks == (1, 5, 7)


def test_all_layers_from_one_read_equal_the_layer_by_layer_reads(tmp_path):
    store = StateStore(tmp_path, KEY)
    write(store)
    widths = [np.ones((5, width), np.float32) * width for width in (3, 0, 7)]   # layers of differing widths
    store.write("fra_Latn", {"nas": {"weighted": widths}}, [f"u{i}" for i in range(5)], "f", n_tokens=np.arange(5))
    for language, kind in (("eng_Latn", "nas"), ("eng_Latn", "hidden"), ("fra_Latn", "nas")):
        layers = store.layers(language, kind, "weighted")
        assert len(layers) == store.n_layers(language, kind, "weighted")
        for layer, states in enumerate(layers):
            expected = store.read(language, kind, "weighted", layer)
            assert states.dtype == np.float32 and states.shape == expected.shape
            np.testing.assert_array_equal(states, expected)
    assert [layer.shape[1] for layer in store.layers("fra_Latn", "nas", "weighted")] == [3, 0, 7]


def test_values_beyond_half_precision_are_stored_in_float32(tmp_path):
    store = StateStore(tmp_path, KEY)
    data = states(scale=1e6)
    write(store, data=data)
    np.testing.assert_array_equal(store.read("eng_Latn", "hidden", "weighted"), data["hidden"]["weighted"])


def test_key_changes_give_another_store(tmp_path):
    assert StateStore(tmp_path, KEY).path == StateStore(tmp_path, dict(KEY)).path
    for change in ({"max_length": 9}, {"revision": "abd"}, {"corpus": "other"}):
        assert StateStore(tmp_path, {**KEY, **change}).path != StateStore(tmp_path, KEY).path


def test_status_missing_complete_stale(tmp_path):
    store = StateStore(tmp_path, KEY)
    assert store.status("eng_Latn", "f1") == "missing"
    write(store)
    assert store.status("eng_Latn", "f1") == "complete"
    assert store.status("eng_Latn", "f2") == "stale"
    write(store, fingerprint="f2", data=states(seed=1))
    assert store.status("eng_Latn", "f2") == "complete"
    np.testing.assert_allclose(store.read("eng_Latn", "nas", "weighted"), states(1)["nas"]["weighted"], atol=1e-3)


def disk_full_at_array(monkeypatch, n: int) -> None:
    """Make the n-th array written fail as a full disk does."""
    real, calls = StateStore._write_array, []

    def failing(group, name, array):
        calls.append(name)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(group, name, array)

    monkeypatch.setattr(StateStore, "_write_array", staticmethod(failing))


def test_disk_full_during_a_write_leaves_no_entry_and_says_why(tmp_path, monkeypatch):
    store = StateStore(tmp_path, KEY)
    disk_full_at_array(monkeypatch, 3)
    with pytest.raises(NeuronXAError, match="No space left on device. Nothing was marked complete"):
        write(store)
    assert store.status("eng_Latn", "f1") == "missing"
    assert store.languages() == []
    assert not list((tmp_path / ".staging").iterdir())


def test_integer_arrays_keep_their_type(tmp_path):
    store = StateStore(tmp_path, KEY)
    counts = np.arange(12, dtype=np.int64).reshape(3, 4) * 10**6
    store.write_arrays("eng_Latn", {"active": counts}, [], "f", n_tokens_total=5)
    np.testing.assert_array_equal(store.array("eng_Latn", "active"), counts)


def test_reading_a_missing_language_is_a_clear_error(tmp_path):
    with pytest.raises(NeuronXAError, match="run stage one"):
        StateStore(tmp_path, KEY).read("fra_Latn", "nas", "weighted")


def chunk_files(store, language, name):
    return sorted(p for p in (Path(store.path) / language / name).glob("c.*") if p.is_file())


def test_truncated_chunk_is_detected_on_read(tmp_path):
    store = StateStore(tmp_path, KEY)
    write(store)
    chunk = chunk_files(store, "eng_Latn", "nas/weighted")[1]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    assert store.status("eng_Latn", "f1") == "complete"     # the file is there: only its checksum can tell
    store.read("eng_Latn", "nas", "weighted", 0)              # other layers still read
    with pytest.raises(NeuronXAError, match="corrupt.*rerun stage one"):
        store.read("eng_Latn", "nas", "weighted", 1)


def test_missing_chunk_makes_the_entry_corrupt(tmp_path):
    store = StateStore(tmp_path, KEY)
    write(store)
    chunk_files(store, "eng_Latn", "hidden/weighted")[2].unlink()
    assert store.status("eng_Latn", "f1") == "corrupt"
    with pytest.raises(NeuronXAError, match="no complete cached states"):
        store.read("eng_Latn", "hidden", "weighted", 0)


def test_metadata_that_does_not_match_its_key_is_never_used(tmp_path):
    store = StateStore(tmp_path, KEY)
    write(store)
    other = StateStore(tmp_path, {**KEY, "max_length": 9})
    os.replace(store.path, other.path)                       # an entry filed under another key
    assert other.status("eng_Latn", "f1") == "corrupt"
    write(other)                                               # rewriting repairs it
    assert other.status("eng_Latn", "f1") == "complete"
    meta = Path(other.path) / "zarr.json"
    attrs = json.loads(meta.read_text())
    attrs["attributes"]["key"]["max_length"] = 10              # edited root metadata
    meta.write_text(json.dumps(attrs))
    assert other.status("eng_Latn", "f1") == "corrupt"


@pytest.fixture
def memory_root():
    """A fresh in-memory fsspec filesystem, cleared afterwards."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://neuronxa-test-{os.urandom(4).hex()}"
    yield root
    fs.rm(root.removeprefix("memory://"), recursive=True)


def test_a_cache_at_an_fsspec_url_round_trips_and_detects_damage(memory_root):
    store = StateStore(memory_root, KEY)
    assert not store.local and store.url().startswith("memory://")
    assert store.status("eng_Latn", "f1") == "missing"
    data = states()
    write(store, data=data)
    assert store.status("eng_Latn", "f1") == "complete" and store.languages() == ["eng_Latn"]
    assert store.status("eng_Latn", "f2") == "stale"
    again = StateStore(memory_root, KEY)                       # a new process would see the same entry
    np.testing.assert_allclose(again.read("eng_Latn", "nas", "weighted", 1), data["nas"]["weighted"][1], atol=1e-3)
    assert zarr.open_group(again.url() + "/eng_Latn", mode="r")["hidden/weighted"].dtype == np.float16
    write(store, data=states(seed=1), fingerprint="f2")        # a rewrite replaces the entry whole
    np.testing.assert_allclose(StateStore(memory_root, KEY).read("eng_Latn", "nas", "weighted"),
                               states(1)["nas"]["weighted"], atol=1e-3)
    assert store.fs.ls(f"{store.root}/.staging") == []
    chunks = [p for p in store.fs.find(f"{store.path}/eng_Latn/nas/weighted") if p.rsplit("/", 1)[-1].startswith("c.")]
    store.fs.rm(chunks[0])
    assert store.status("eng_Latn", "f2") == "corrupt"


def test_a_failed_write_at_an_fsspec_url_leaves_nothing_complete(memory_root, monkeypatch):
    store = StateStore(memory_root, KEY)
    disk_full_at_array(monkeypatch, 2)
    with pytest.raises(NeuronXAError, match="Nothing was marked complete"):
        write(store)
    assert store.status("eng_Latn", "f1") == "missing" and store.fs.ls(f"{store.root}/.staging") == []


def _stored_by_numpy(array: np.ndarray) -> np.ndarray:
    """The store's rule restated: float16 where every value is finite and within float16's range, else float32."""
    fits = np.isfinite(array).all() and np.abs(array).max(initial=0.0) < np.finfo(np.float16).max
    return array.astype(np.float16 if fits else np.float32)


@pytest.mark.parametrize("largest", [1.0, 65503.0, 65504.0, np.inf, np.nan])
def test_states_converted_where_they_are_held_equal_the_stores_numpy_rule(largest):
    """Stage one converts each language's rows to the store's precision with torch (on the GPU where the states
    are): the same dtype decision and the same bits as numpy's conversion, halfway cases and subnormals included."""
    import torch

    from neuronxa.stage_one.forward import PooledStates, rows_as_stored

    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)   # (poolings, layers, sentences, width)
    values.flat[:4] = [2.0**-20, 1 + 2.0**-11, 1 + 3 * 2.0**-11, -(2.0**-15) * 1.5]   # subnormal, ties to even
    values[1, 0, 4, 0] = largest   # in rows 3:6 of pooling "mean"
    layers = [torch.from_numpy(values[:, 0]), torch.from_numpy(values[:, 1, :, :3])]   # widths 5 and 3
    held = PooledStates({"nav": torch.from_numpy(values), "routing": layers}, np.ones(6), np.zeros(6, bool))
    for lo, hi in [(0, 3), (3, 6)]:
        stored = rows_as_stored(held, lo, hi)
        for p, pooling in enumerate(("weighted", "mean", "last")):
            expected = _stored_by_numpy(values[p, :, lo:hi])
            assert stored["nav"][pooling].dtype == expected.dtype
            np.testing.assert_array_equal(stored["nav"][pooling].view(np.uint8), expected.view(np.uint8))
            per_layer = [values[p, 0, lo:hi], values[p, 1, lo:hi, :3]]
            dtype = np.float16 if all(_stored_by_numpy(a).dtype == np.float16 for a in per_layer) else np.float32
            for got, layer in zip(stored["routing"][pooling], per_layer):
                assert got.dtype == dtype
                np.testing.assert_array_equal(got.view(np.uint8), layer.astype(dtype).view(np.uint8))
