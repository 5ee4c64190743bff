"""Time of every language as pivot (``task=pairwise``) on synthetic cached states of the embedded model's shape.

    python -m bench.pairwise                     # 20 languages, 100 units, Gemma 3 270M's widths and layers
    python -m bench.pairwise --languages 10 40   # other sizes

Each size is timed with and without intervals (200 half-samples); the cost grows with the number of language
pairs, so the table ends with the extrapolation to 200 languages from the largest size measured.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from bench.run import timed
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two.pairwise import pairwise

LAYERS, NAS_WIDTH, HIDDEN_WIDTH = 18, 2048, 640   # Gemma 3 270M


def synthetic_store(folder: str, languages: int, units: int, seed: int = 0) -> tuple[StateStore, list[str]]:
    """Random NAS and hidden states sharing a per-unit meaning, for ``languages`` languages."""
    rng = np.random.default_rng(seed)
    meaning = {"nas": rng.random((units, NAS_WIDTH)), "hidden": rng.normal(size=(units, HIDDEN_WIDTH))}
    store = StateStore(folder, {"model": "synthetic", "corpus": f"{languages}x{units}"})
    names = [f"l{i:03d}_Latn" for i in range(languages)]
    ids = [f"u{i}" for i in range(units)]
    for name in names:
        states = {kind: {"weighted": np.stack([np.abs(base + rng.normal(size=base.shape)) for _ in range(LAYERS)])
                         .astype(np.float32)} for kind, base in meaning.items()}
        store.write(name, states, ids, name, n_tokens=np.ones(units), n_truncated=0)
    return store, names


def pairwise_seconds(store: StateStore, names: list[str], resamples: int) -> float:
    """Seconds for NASCA and MEXA of every language pair, with ``resamples`` half-samples per score."""
    return timed(pairwise, store, ["nasca", "mexa"], "weighted", languages=names, resamples=resamples,
                 progress=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", type=int, nargs="+", default=[20])
    parser.add_argument("--units", type=int, default=100)
    args = parser.parse_args()
    print(f"{'languages':>9} {'pairs':>6} {'no intervals (s)':>17} {'200 half-samples (s)':>21}   "
          f"(nasca + mexa, {LAYERS} layers, {args.units} units)")
    for languages in args.languages:
        with tempfile.TemporaryDirectory() as folder:
            store, names = synthetic_store(folder, languages, args.units)
            bare, with_intervals = pairwise_seconds(store, names, 0), pairwise_seconds(store, names, 200)
        pairs = languages * (languages - 1) // 2
        print(f"{languages:>9} {pairs:>6} {bare:>17.1f} {with_intervals:>21.1f}")
    scale = (200 * 199 / 2) / pairs
    print(f"{200:>9} {200 * 199 // 2:>6} {bare * scale:>17.0f} {with_intervals * scale:>21.0f}   "
          f"(extrapolated: × {scale:.0f} pairs)")


if __name__ == "__main__":
    main()
