"""Layer chunks written and read on the calling thread: the same bytes and values as zarr's own path."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from neuronxa.stage_one.chunk_io import read_layers, write_layers
from neuronxa.stage_one.store import CODECS


def _array(group: zarr.Group, name: str, data: np.ndarray) -> zarr.Array:
    """An array as the store creates it: one chunk per index of the first axis."""
    return group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]),
                              compressors=CODECS, chunk_key_encoding={"name": "default", "separator": "."},
                              config={"write_empty_chunks": True})


def _data(dtype: str, shape: tuple[int, ...] = (5, 7, 33)) -> np.ndarray:
    values = np.random.default_rng(0).normal(size=shape).astype(dtype)
    values[-1] = 0   # an all-zero layer is written too
    return values


@pytest.mark.parametrize("dtype, shape", [("float16", (5, 7, 33)), ("float32", (5, 7, 33)),
                                          ("int64", (1, 40)), ("float16", (3, 1, 1))])
def test_chunk_files_equal_zarrs_own(tmp_path: Path, dtype: str, shape: tuple[int, ...]):
    data = _data(dtype, shape)
    group = zarr.open_group(str(tmp_path), mode="w")
    write_layers(_array(group, "direct", data), data)
    _array(group, "zarr", data)[...] = data
    written = sorted(path.name for path in (tmp_path / "direct").glob("c.*"))
    assert written == sorted(path.name for path in (tmp_path / "zarr").glob("c.*"))
    assert len(written) == shape[0]
    for name in written:
        assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "zarr" / name).read_bytes()


@pytest.mark.parametrize("index", [..., slice(None), slice(1, 4), slice(-2, None), slice(3, 1), 0, 4, -1, -5])
def test_reads_equal_zarrs_own(tmp_path: Path, index):
    data = _data("float16")
    group = zarr.open_group(str(tmp_path), mode="w")
    _array(group, "states", data)[...] = data
    read = read_layers(group["states"], index)
    assert read.dtype == data.dtype
    np.testing.assert_array_equal(read, data[index])
    np.testing.assert_array_equal(read, group["states"][index])


@pytest.mark.parametrize("index", [5, -6])
def test_an_index_out_of_range_is_zarrs_error(tmp_path: Path, index: int):
    group = zarr.open_group(str(tmp_path), mode="w")
    _array(group, "states", _data("float16"))[...] = _data("float16")
    with pytest.raises(IndexError):
        read_layers(group["states"], index)


def test_a_damaged_or_missing_chunk_is_an_error_never_data(tmp_path: Path):
    data = _data("float16")
    group = zarr.open_group(str(tmp_path), mode="w")
    write_layers(_array(group, "states", data), data)
    chunk = tmp_path / "states" / "c.2.0.0"
    damaged = bytearray(chunk.read_bytes())
    damaged[20] ^= 0xFF
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum"):
        read_layers(group["states"])
    np.testing.assert_array_equal(read_layers(group["states"], 3), data[3])   # the others still read
    chunk.unlink()
    with pytest.raises(ValueError, match="chunk 2 is missing"):
        read_layers(group["states"], 2)


def test_other_stores_and_chunkings_go_through_zarr(tmp_path: Path):
    data = _data("float32")
    in_memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    write_layers(_array(in_memory, "states", data), data)
    np.testing.assert_array_equal(read_layers(in_memory["states"], slice(1, 3)), data[1:3])
    whole = zarr.open_group(str(tmp_path), mode="w").create_array("whole", shape=data.shape, dtype=data.dtype,
                                                                   chunks=data.shape, compressors=CODECS)
    write_layers(whole, data)
    np.testing.assert_array_equal(read_layers(whole, 2), data[2])
    np.testing.assert_array_equal(read_layers(whole, slice(None, None, 2)), data[::2])
