"""Stage two on a synthetic cache whose alignment is known, against a direct computation per layer."""

import numpy as np
import pandas as pd
import pytest

from helpers import LAYERS, UNITS, loop_cosine, loop_weak_alignment, retrieval_accuracy
from neuronxa.errors import NeuronXAError
from neuronxa.stage_two import metrics, registry, uncertainty
from neuronxa.stage_two.pairwise import pairwise
from neuronxa.stage_two.registry import METRICS
from neuronxa.stage_two.scoring import score, summarise

DENSE_METRICS = [name for name in METRICS if name != "routing"]   # the synthetic store is of a dense model


def test_scores_equal_a_direct_loop_computation(store):
    scores, _ = score(store, DENSE_METRICS, "weighted", pivot="eng_Latn", progress=False)
    for language in ("fra_Latn", "xxx_Latn"):
        for layer in range(LAYERS):
            value = scores.set_index(["metric", "language", "layer"])["value"]
            X = {k: store.read("eng_Latn", k, "weighted", layer) for k in ("nas", "nav", "hidden")}
            Y = {k: store.read(language, k, "weighted", layer) for k in ("nas", "nav", "hidden")}
            for metric, kind in (("nasca", "nas"), ("navca", "nav"), ("mexa", "hidden")):
                expected = loop_weak_alignment(loop_cosine(X[kind], Y[kind]).tolist())
                assert value[metric, language, layer] == pytest.approx(expected)
            assert value["cka", language, layer] == pytest.approx(metrics.linear_cka(X["hidden"], Y["hidden"]))
            assert value["anc", language, layer] == pytest.approx(metrics.anc(X["hidden"], Y["hidden"]))
            retrieval = retrieval_accuracy(metrics.cosine_matrix(X["nas"], Y["nas"]))
            assert value["retrieval.nas.target_to_pivot", language, layer] == retrieval["target_to_pivot"]


def test_known_alignment(store):
    scores, _ = score(store, ["nasca", "mexa"], "weighted", pivot="eng_Latn", progress=False)
    values = scores.groupby(["metric", "language"])["value"]
    assert values.min()["nasca", "fra_Latn"] == 1.0          # a small perturbation keeps every pair aligned
    assert values.min()["nasca", "deu_Latn"] == 1.0          # aligned by unit id, whatever the order
    assert (scores[scores.language == "deu_Latn"]["n"] == 8).all()
    assert values.mean()["nasca", "xxx_Latn"] < values.mean()["nasca", "fra_Latn"]
    assert set(scores.language) == {"fra_Latn", "xxx_Latn", "deu_Latn"}   # the pivot is not scored


def test_summary_pools_layers_and_reports_chance(store):
    scores, _ = score(store, ["nasca", "cka"], "weighted", pivot="eng_Latn", languages=["xxx_Latn"], progress=False)
    by_layer = scores[scores.metric == "nasca"].set_index("layer")["value"]
    for pool, expected in (("mean", by_layer.mean()), ("max", by_layer.max())):
        row = summarise(scores, pool).set_index("metric").loc["nasca"]
        assert row.score == pytest.approx(expected) and row.n == UNITS
        assert row.best_layer == by_layer.idxmax()
        assert row.chance_p == pytest.approx(metrics.chance_pvalue(round(expected * UNITS), UNITS))
    assert np.isnan(summarise(scores).set_index("metric").loc["cka"].chance_p)


def test_bad_requests_are_clear(store):
    with pytest.raises(NeuronXAError, match="unknown metric 'nascar'"):
        score(store, ["nascar"], "weighted", pivot="eng_Latn", progress=False)
    with pytest.raises(NeuronXAError, match="pivot language 'spa_Latn'"):
        score(store, ["nasca"], "weighted", pivot="spa_Latn", progress=False)
    with pytest.raises(NeuronXAError, match="no cached states for ita_Latn"):
        score(store, ["nasca"], "weighted", pivot="eng_Latn", languages=["ita_Latn"], progress=False)
    with pytest.raises(NeuronXAError, match="no cached states for ita_Latn"):
        pairwise(store, ["nasca"], "weighted", languages=["eng_Latn", "ita_Latn"], progress=False)
    with pytest.raises(NeuronXAError, match="mean or max"):
        summarise(score(store, ["nasca"], "weighted", pivot="eng_Latn", progress=False)[0], "median")


def test_the_registry_says_what_each_score_reads_and_how_its_interval_is_made(store):
    scores, _ = score(store, DENSE_METRICS, "weighted", pivot="eng_Latn", progress=False)
    dense = {name for name, entry in registry.SCORES.items() if entry.metric != "routing"}
    assert set(scores.metric) == dense          # every column the scorer writes is registered
    routing = registry.score("retrieval.routing.target_to_pivot")
    assert (routing.metric, routing.representation, routing.direction) == ("routing", "routing", "target_to_pivot")
    assert registry.score("routing").headline and registry.representations(["routing"]) == ["routing"]
    one_way = registry.score("retrieval.nas.pivot_to_target")
    assert (one_way.metric, one_way.kind, one_way.representation, one_way.direction) == (
        "retrieval", "retrieval", "nas", "pivot_to_target")
    assert one_way.label == "R.nas.p→t" and not one_way.headline and one_way.counts_units
    assert registry.score("retrieval.hidden.bidirectional").headline
    assert registry.score("navca").representation == "nav" and registry.score("navca").counts_units
    assert registry.score("mexa").interval is uncertainty.share_interval
    assert registry.score("svcca").interval is uncertainty.normal_interval and not registry.score("svcca").counts_units
    assert registry.of_kind("alignment") == ["nasca", "navca", "mexa"]
    assert registry.representations(["retrieval", "cka"]) == ["hidden", "nas"]
    with pytest.raises(NeuronXAError, match="unknown score 'retrieval.nav.bidirectional'"):
        registry.score("retrieval.nav.bidirectional")


def test_the_best_layer_is_the_first_best_defined_one_as_pandas_idxmax_gives():
    layers = [0, 1, 2, 3]
    cases = {"tie": [0.2, 0.5, 0.5, np.nan], "leading_nan": [np.nan, 0.1, 0.3, 0.2], "none": [np.nan] * 4}
    scores = pd.DataFrame([{"metric": "cka", "pivot": "eng", "language": language, "layer": layer, "value": value,
                            "n": 10} for language, values in cases.items() for layer, value in zip(layers, values)])
    summary = summarise(scores).set_index("language")
    for language, values in cases.items():   # the former lookup, restated
        series = pd.Series(values, index=layers)
        best = series.idxmax() if series.notna().any() else -1
        assert summary.loc[language, "best_layer"] == best
        np.testing.assert_equal(summary.loc[language, "best_value"], series.get(best, np.nan))


def test_layers_scored_on_threads_equal_one_at_a_time(store, monkeypatch):
    """A target's layers are scored side by side on threads: the same values and half-samples, bit for bit,
    in the same order as on one thread."""
    from neuronxa.stage_two import scoring

    wanted = [name for name in METRICS if name != "routing"]
    runs = []
    for workers in (1, 4):
        monkeypatch.setattr(scoring.os, "cpu_count", lambda workers=workers: workers)
        runs.append(score(store, wanted, "weighted", pivot="eng_Latn", progress=False, resamples=30))
    (one, one_halves), (many, many_halves) = runs
    pd.testing.assert_frame_equal(one, many, check_exact=True)
    assert one_halves.keys() == many_halves.keys()
    for key in one_halves:
        np.testing.assert_array_equal(one_halves[key], many_halves[key])
