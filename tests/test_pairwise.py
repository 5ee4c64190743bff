"""Every language as pivot: the batched float32 computation with its float64 settling of near ties against a
direct computation, pair by pair, of the one-pivot path (float64 cosines, ``metrics.beaten``, half-sample shares
by ``uncertainty.subset_shares``), with exact ties, a zero vector and units in another order."""

import numpy as np
import pytest

from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import metrics, pairwise, scoring, uncertainty

UNITS, WIDTH, LAYERS = 30, 24, 3


@pytest.fixture
def ties_store(tmp_path):
    """Six languages sharing a meaning per unit; in one, two units are the same vector (exact ties), in another a
    unit is a zero vector, and a third lists its units in another order."""
    rng = np.random.default_rng(5)
    meaning = rng.normal(size=(LAYERS, UNITS, WIDTH))
    store = StateStore(tmp_path, {"model": "synthetic", "corpus": "ties"})
    ids = [f"u{i}" for i in range(UNITS)]
    for index, noise in enumerate((0.3, 0.6, 1.0, 1.5, 3.0, 0.8)):
        states = (meaning + noise * rng.normal(size=meaning.shape)).astype(np.float16).astype(np.float32)
        order = np.arange(UNITS)
        if index == 1:
            states[:, 4] = states[:, 3]
        if index == 2:
            states[:, 7] = 0.0
        if index == 3:
            order = rng.permutation(UNITS)
        store.write(f"l{index}", {"hidden": {"weighted": states[:, order]}}, [ids[i] for i in order], f"l{index}",
                    n_tokens=np.ones(UNITS), n_truncated=0)
    return store


def direct(store: StateStore, pivot: str, target: str, subsets: np.ndarray, layer_pool: str) -> tuple:
    """μ of one ordered pair, pooled over layers, and its half-sample values, one layer at a time in float64
    (units in the first language's order, as the half-samples are drawn)."""
    units = store.ids(store.languages()[0])
    order = {language: [store.ids(language).index(unit) for unit in units] for language in (pivot, target)}
    values, halves = [], []
    for layer in range(LAYERS):
        C = metrics.cosine_matrix(store.read(pivot, "hidden", "weighted", layer)[order[pivot]],
                                  store.read(target, "hidden", "weighted", layer)[order[target]])
        by_row, by_column = metrics.beaten(C)
        values.append(np.mean(~(by_row | by_column).any(axis=-1)))
        halves.append(uncertainty.subset_shares(by_row | by_column, subsets))
    return scoring.pool_layers(np.array(values), layer_pool), scoring.pool_layers(np.array(halves), layer_pool)


@pytest.mark.parametrize("layer_pool", ["mean", "max"])
def test_every_pair_equals_the_direct_computation(ties_store, layer_pool):
    languages = ties_store.languages()
    subsets = uncertainty.half_samples(UNITS, 40, seed=1)
    pairs = pairwise.pairwise(ties_store, ["mexa"], "weighted", languages=languages, layer_pool=layer_pool,
                              resamples=40, seed=1, progress=False)
    assert len(pairs) == len(languages) * (len(languages) - 1)
    for row in pairs.itertuples():
        value, halves = direct(ties_store, row.pivot, row.target, subsets, layer_pool)
        assert row.value == pytest.approx(value, abs=1e-12)
        low, high = scoring.interval("mexa", value, halves, n=UNITS, level=0.95)
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_near_ties_are_settled_in_float64():
    """Two target units whose cosines with a pivot unit differ by about 4e-9 (within the float32 tolerance, so
    settled in float64): the pivot's own unit wins, as the one-pivot path decides."""
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 6, 8)).astype(np.float16).astype(np.float32)
    states[:, 0, :3], states[:, 0, 3:] = [1.0, 1.0 + 2**-10, 16.0], 0.0   # pivot and target unit 0: x
    states[1, 1, :3], states[1, 1, 3:] = [1.0 + 2**-10, 1.0, 16.0], 0.0   # target unit 1: x's first two swapped
    layer = pairwise.Layer(states)
    beaten = layer.beaten(0, layer.cosines(0, 1)[0])
    by_row, by_column = metrics.beaten(metrics.cosine_matrix(states[0], states[1]))
    np.testing.assert_array_equal(beaten[1], by_row | by_column)
    assert not (by_row | by_column)[0, 1]
