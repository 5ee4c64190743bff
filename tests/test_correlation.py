"""Benchmarks in (CSV, lm-eval files, stand-in) and correlations out."""

import math

import numpy as np
import pandas as pd
import pytest

from helpers import FIXTURES
from neuronxa.data.benchmarks import for_model, read_csv, read_lm_eval
from neuronxa.errors import NeuronXAError
from neuronxa.stage_two.correlation import correlate


def summary(**scores):
    return pd.DataFrame([{"metric": "nasca", "language": k, "score": v} for k, v in scores.items()])


def bench(**values):
    return pd.DataFrame([{"model": "m", "benchmark": "xnli", "language": k, "value": v} for k, v in values.items()])


def test_pearson_and_spearman_over_shared_languages_without_the_pivot():
    s = summary(eng_Latn=1.0, fra_Latn=0.9, deu_Latn=0.7, zho_Hans=0.4, swh_Latn=0.1, yor_Latn=0.2)
    b = bench(eng_Latn=0.99, fra_Latn=0.8, deu_Latn=0.75, zho_Hans=0.5, swh_Latn=0.3, hin_Deva=0.6)
    row = correlate(s, b, "eng_Latn").iloc[0]
    x, y = np.array([0.9, 0.7, 0.4, 0.1]), np.array([0.8, 0.75, 0.5, 0.3])
    assert row.n == 4 and row.languages == "fra_Latn deu_Latn zho_Hans swh_Latn"
    assert row.dropped == "hin_Deva yor_Latn"
    assert row.pearson_r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert row.spearman_rho == pytest.approx(1.0)


def test_fewer_than_three_languages_or_a_constant_side_give_no_correlation():
    row = correlate(summary(fra_Latn=0.9, deu_Latn=0.7), bench(fra_Latn=0.8, deu_Latn=0.7), "eng_Latn").iloc[0]
    assert math.isnan(row.pearson_r) and "needs 3" in row.note
    constant = correlate(summary(a=0.5, b=0.5, c=0.5), bench(a=1, b=2, c=3), "eng_Latn").iloc[0]
    assert math.isnan(constant.pearson_r) and "constant" in constant.note


def test_csv_errors_name_file_and_row(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("model,benchmark,language,value\nm,xnli,fr,0.5\nm,xnli,de,n/a\n")
    with pytest.raises(NeuronXAError, match=r"bench.csv, row 3: value 'n/a' is not a number"):
        read_csv(path)
    path.write_text("model,task,language,value\n")
    with pytest.raises(NeuronXAError, match="missing column"):
        read_csv(path)
    path.write_text("model,benchmark,language,value\nm,xnli,fr,0.5\n")
    assert read_csv(path).language.tolist() == ["fra_Latn"]
    with pytest.raises(NeuronXAError, match="no benchmark results for model 'other'"):
        for_model(read_csv(path), "other")


def test_lm_eval_result_files_map_tasks_and_languages():
    results = read_lm_eval([FIXTURES / "lm_eval"]).set_index(["benchmark", "language"])["value"]
    assert results.to_dict() == {("xnli", "fra_Latn"): 0.48, ("xnli", "deu_Latn"): 0.45,
                                 ("belebele", "zho_Hans"): 0.61, ("m_arc", "ita_Latn"): 0.31,
                                 ("m_mmlu", "swh_Latn"): 0.27}
    norm = read_lm_eval([FIXTURES / "lm_eval"], "tiny", metric_key="acc_norm,none")
    assert set(norm.benchmark) == {"belebele", "m_arc"} and set(norm.model) == {"tiny"}

