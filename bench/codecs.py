"""Speed and size of Blosc codecs on cached pooled states, chunk by chunk as the cache writes them.

    python -m bench.codecs outputs/cache/gemma3-270m__udhr-article__<digest>    # a store that `make run` wrote

Reads (never writes) every layer chunk of the first few languages and encodes each with every candidate codec;
prints bytes per value and the CPU seconds of encoding and decoding them all (the best of two rounds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

CANDIDATES = [("zstd", 3, Blosc.BITSHUFFLE), ("zstd", 1, Blosc.BITSHUFFLE), ("zstd", 1, Blosc.SHUFFLE),
              ("lz4", 5, Blosc.BITSHUFFLE), ("lz4", 1, Blosc.BITSHUFFLE), ("lz4", 5, Blosc.SHUFFLE),
              ("blosclz", 5, Blosc.BITSHUFFLE), ("blosclz", 5, Blosc.SHUFFLE), ("lz4hc", 1, Blosc.BITSHUFFLE)]


def layer_chunks(store: Path, languages: int) -> list[np.ndarray]:
    """Every (units, width) layer chunk of the pooled states of the first ``languages`` languages, as stored."""
    chunks = []
    for entry in sorted(path for path in store.iterdir() if path.is_dir())[:languages]:
        group = zarr.open_group(str(entry), mode="r")
        for kind in ("nas", "nav", "hidden"):
            for pooling in ("weighted", "mean", "last"):
                if f"{kind}/{pooling}" in group:
                    states = np.asarray(group[f"{kind}/{pooling}"][...])
                    chunks.extend(states[layer] for layer in range(len(states)))
    return chunks


def cpu_seconds(function, items: list) -> tuple[float, list]:
    started = time.process_time()
    results = [function(item) for item in items]
    return time.process_time() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="a cache store folder (model__corpus__digest)")
    parser.add_argument("--languages", type=int, default=4)
    args = parser.parse_args()
    chunks = layer_chunks(args.store, args.languages)
    values = sum(chunk.size for chunk in chunks)
    print(f"{len(chunks)} chunks, {values} values ({chunks[0].dtype})")
    for name, level, shuffle in CANDIDATES:
        codec = Blosc(cname=name, clevel=level, shuffle=shuffle)
        encode, encoded = min((cpu_seconds(codec.encode, chunks) for _ in range(2)), key=lambda result: result[0])
        decode = min(cpu_seconds(codec.decode, encoded)[0] for _ in range(2))
        shuffled = "bitshuffle" if shuffle == Blosc.BITSHUFFLE else "shuffle"
        print(f"  {name:>8}-{level} {shuffled:<10} {sum(map(len, encoded)) / values:6.3f} bytes/value   "
              f"encode {encode:5.2f} s   decode {decode:5.2f} s")


if __name__ == "__main__":
    main()
