"""Stage two's kept scores: read back exactly, found only by what their numbers depend on."""

import numpy as np
import pandas as pd
import pytest

from neuronxa.stage_two import remembered, scoring
from helpers import HIDDEN, NEURONS, UNITS, synthetic

METRICS = ["nasca", "mexa"]


def _score(store, **changes):
    arguments = {"pivot": "eng_Latn", "languages": None, "resamples": 6, "seed": 0, **changes}
    pooling = arguments.pop("pooling", "weighted")
    return remembered.score(store, arguments.pop("metrics", METRICS), pooling, **arguments)


def _assert_same(first, second):
    pd.testing.assert_frame_equal(first[0], second[0], check_exact=True)
    assert list(first[0].dtypes) == list(second[0].dtypes)
    assert first[1].keys() == second[1].keys()
    for key, values in first[1].items():
        assert values.dtype == second[1][key].dtype
        np.testing.assert_array_equal(values, second[1][key])


def _no_computing(monkeypatch):
    monkeypatch.setattr(scoring, "score", lambda *a, **k: pytest.fail("computed again"))


def test_a_kept_result_is_read_back_exactly_without_computing(store, monkeypatch, tmp_path):
    computed = scoring.score(store, METRICS, "weighted", pivot="eng_Latn", resamples=6, seed=0, progress=False)
    first = _score(store)
    _assert_same(computed, first)
    assert len(list((tmp_path / ".scores").glob("*.npz"))) == 1
    _no_computing(monkeypatch)
    _assert_same(first, _score(store))
    assert (first[0].to_csv(index=False) == _score(store)[0].to_csv(index=False))


@pytest.mark.parametrize("change", [{"metrics": ["nasca"]}, {"seed": 1}, {"resamples": 4}, {"pivot": "fra_Latn"},
                                    {"languages": ["fra_Latn"]}])
def test_any_other_argument_is_another_result(store, tmp_path, change):
    _score(store)
    changed = _score(store, **change)
    assert len(list((tmp_path / ".scores").glob("*.npz"))) == 2
    arguments = {"pivot": "eng_Latn", "languages": None, "resamples": 6, "seed": 0, **change}
    expected = scoring.score(store, arguments.pop("metrics", METRICS), arguments.pop("pooling", "weighted"),
                             progress=False, **arguments)
    _assert_same(expected, changed)


def test_another_pooling_is_kept_apart(store):
    where = {pooling: remembered.kept_path(store, METRICS, pooling, pivot="eng_Latn", languages=None, resamples=6,
                                           seed=0) for pooling in ("weighted", "mean")}
    assert where["weighted"] != where["mean"]


def test_a_rewritten_entry_or_a_changed_metric_source_is_computed_again(store, monkeypatch, tmp_path):
    first = _score(store)
    rng = np.random.default_rng(9)
    base = {"nas": rng.random((UNITS, NEURONS)), "nav": rng.random((UNITS, NEURONS)),
            "hidden": rng.normal(size=(UNITS, HIDDEN))}
    store.write("fra_Latn", synthetic(base, 0.5, rng), [f"u{i}" for i in range(UNITS)], "fra_Latn",
                n_tokens=np.ones(UNITS), n_truncated=0)
    rewritten = _score(store)
    assert not rewritten[0].equals(first[0])
    _assert_same(scoring.score(store, METRICS, "weighted", pivot="eng_Latn", resamples=6, seed=0,
                               progress=False), rewritten)
    monkeypatch.setattr(remembered, "_source_digest", lambda: "another")
    calls = []
    real = scoring.score
    monkeypatch.setattr(scoring, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    _score(store)
    assert calls == [1]


def test_nothing_is_kept_when_told_so_or_off_a_local_folder(store, tmp_path):
    _score(store, keep=False)
    assert not (tmp_path / ".scores").exists()
    assert remembered.kept_path(object(), METRICS, "weighted", pivot="eng_Latn", languages=None, resamples=6,
                                seed=0) is None


def test_an_unreadable_result_is_computed_again(store, tmp_path):
    first = _score(store)
    (kept,) = (tmp_path / ".scores").glob("*.npz")
    kept.write_bytes(b"not an npz")
    _assert_same(first, _score(store))
    _assert_same(first, _score(store))   # and kept again


def test_a_cache_that_cannot_keep_scores_still_scores(store, tmp_path):
    (tmp_path / ".scores").write_text("a file where the folder would go")
    first = _score(store)
    _assert_same(scoring.score(store, METRICS, "weighted", pivot="eng_Latn", resamples=6, seed=0,
                               progress=False), first)
