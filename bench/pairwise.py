"""Time of every language as pivot (``task=pairwise``) on synthetic cached states of the embedded model's shape.

    python -m bench.pairwise                     # the paper's scale: 200 languages, 100 units, Gemma 3 270M's widths
    python -m bench.pairwise --languages 20 40   # other sizes

Each size is measured (never extrapolated): NASCA and MEXA of every ordered pair, with intervals from 200
half-samples, over all 18 layers.
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


def measured(languages: int, units: int = 100, resamples: int = 200) -> float:
    """Seconds of every ordered pair of ``languages`` synthetic languages, intervals included."""
    with tempfile.TemporaryDirectory() as folder:
        store, names = synthetic_store(folder, languages, units)
        return pairwise_seconds(store, names, resamples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", type=int, nargs="+", default=[200])
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=200, help="half-samples behind each interval")
    args = parser.parse_args()
    print(f"{'languages':>9} {'ordered pairs':>13} {'seconds':>8}   (nasca + mexa, {LAYERS} layers, {args.units} units, "
          f"{args.resamples} half-samples)")
    for languages in args.languages:
        seconds = measured(languages, args.units, args.resamples)
        print(f"{languages:>9} {languages * (languages - 1):>13} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
