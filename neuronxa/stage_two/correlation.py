"""Correlation across target languages between a model's per-language scores and its benchmark results, with
intervals and exact tests, and the comparison of two metrics' correlations with the same benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from neuronxa.stage_two import uncertainty

MIN_LANGUAGES = 3


@dataclass(frozen=True)
class Resampling:
    """How correlations are resampled: bootstrap draws over languages, permutations, interval level, seed."""
    bootstrap: int = 2000
    permutations: int = 9999
    level: float = 0.95
    seed: int = 0


def _by_language(summary: pd.DataFrame, pivot: str) -> dict[str, pd.Series]:
    """Each metric's layer-pooled score per language, the pivot left out."""
    return {metric: scores.set_index("language")["score"].drop(pivot, errors="ignore")
            for metric, scores in summary.groupby("metric", sort=False)}


def _results(benchmarks: pd.DataFrame, pivot: str) -> dict[str, pd.Series]:
    """Each benchmark's result per language (mean over its rows), the pivot left out."""
    return {benchmark: results.groupby("language")["value"].mean().drop(pivot, errors="ignore")
            for benchmark, results in benchmarks.groupby("benchmark", sort=False)}


def _usable(*series: pd.Series) -> list[str]:
    """Languages (in the first series' order) with a finite value in every series."""
    return [lang for lang in series[0].index
            if all(lang in s.index and np.isfinite(s[lang]) for s in series)]


def _tested(x: np.ndarray, y: np.ndarray, resampling: Resampling) -> dict[str, float]:
    """r, ρ with their analytic p, bootstrap interval and permutation p."""
    row = {}
    for kind, analytic in (("pearson", pearsonr), ("spearman", spearmanr)):
        name = "pearson_r" if kind == "pearson" else "spearman_rho"
        row[name], row[f"{kind}_p"] = map(float, analytic(x, y))
        row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = uncertainty.bootstrap_interval(
            x, y, kind, resamples=resampling.bootstrap, level=resampling.level, seed=resampling.seed)
        row[f"{kind}_permutation_p"] = uncertainty.permutation_p(x, y, kind, resampling.permutations, resampling.seed)
    return row


COLUMNS = ["metric", "benchmark", "n", "languages", "dropped", "pearson_r", "pearson_p", "pearson_ci_low",
           "pearson_ci_high", "pearson_permutation_p", "spearman_rho", "spearman_p", "spearman_ci_low",
           "spearman_ci_high", "spearman_permutation_p", "note"]


def correlate(summary: pd.DataFrame, benchmarks: pd.DataFrame, pivot: str,
              resampling: Resampling = Resampling()) -> pd.DataFrame:
    """Pearson r and Spearman ρ per metric × benchmark over the languages both sides have, the pivot excluded:
    analytic p, a bootstrap interval over languages and a permutation p for each. Dropped languages are
    listed; under three shared languages, or with a constant side, there is no correlation (``note``)."""
    rows = []
    for metric, by_language in _by_language(summary, pivot).items():
        for benchmark, values in _results(benchmarks, pivot).items():
            usable = _usable(by_language, values)
            dropped = sorted((set(by_language.index) | set(values.index)) - set(usable))
            row = dict.fromkeys(COLUMNS, np.nan) | {"metric": metric, "benchmark": benchmark, "n": len(usable),
                                                     "languages": " ".join(usable), "dropped": " ".join(dropped),
                                                     "note": ""}
            x, y = by_language[usable].to_numpy(float), values[usable].to_numpy(float)
            if len(usable) < MIN_LANGUAGES:
                row["note"] = f"only {len(usable)} shared language(s); a correlation needs {MIN_LANGUAGES}"
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                row["note"] = "one side is constant across languages: no correlation is defined"
            else:
                row |= _tested(x, y, resampling)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


Replicates = Callable[[str, tuple[str, ...], str], np.ndarray]


def _replicates(scores: dict[str, pd.Series], values: pd.Series, resampling: Resampling) -> Replicates:
    """(metric, languages, kind) -> the metric's correlation with one benchmark's ``values`` on each bootstrap
    draw of those languages; computed once, then shared by every comparison of that metric (the draws depend
    only on the number of languages and the seed, so each comparison's paired draws are the same)."""
    @cache
    def replicates(metric: str, languages: tuple[str, ...], kind: str) -> np.ndarray:
        draws = uncertainty.language_resamples(len(languages), resampling.bootstrap, resampling.seed)
        x, y = (series[list(languages)].to_numpy(float) for series in (scores[metric], values))
        return uncertainty.correlation_replicates(x, y, kind, draws)
    return replicates


def _compared(x_a: np.ndarray, x_b: np.ndarray, y: np.ndarray, kind: str, *, level: float,
              differences: np.ndarray) -> dict:
    """Two metrics' correlations with one benchmark: Williams' p, and the paired bootstrap interval of their
    difference from its values on the draws (``differences``)."""
    statistic = uncertainty.CORRELATIONS[kind]
    r_a, r_b, r_ab = (float(statistic(u, v)) for u, v in ((x_a, y), (x_b, y), (x_a, x_b)))
    low, high = uncertainty.percentile_interval(differences, level)
    return {"r_a": r_a, "r_b": r_b, "difference": r_a - r_b, "ci_low": low, "ci_high": high,
            "p": uncertainty.williams_p(r_a, r_b, r_ab, len(y))}


def compare(summary: pd.DataFrame, benchmarks: pd.DataFrame, pivot: str,
            resampling: Resampling = Resampling()) -> pd.DataFrame:
    """For each benchmark, every pair of metrics' correlations (Pearson, and Spearman on ranks) over the
    languages all three have: the difference, a paired bootstrap interval over languages, and Williams' t
    test for dependent overlapping correlations (the two metrics are measured on the same languages)."""
    scores = _by_language(summary, pivot)
    names = list(scores)
    rows = []
    for benchmark, values in _results(benchmarks, pivot).items():
        replicates = _replicates(scores, values, resampling)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                usable = _usable(scores[a], scores[b], values)
                x_a, x_b, y = (s[usable].to_numpy(float) for s in (scores[a], scores[b], values))
                if len(usable) < 4 or min(np.ptp(x_a), np.ptp(x_b), np.ptp(y)) == 0 or np.array_equal(x_a, x_b):
                    continue  # Williams' t needs four languages, three varying sides and two different scores
                for kind in uncertainty.CORRELATIONS:
                    differences = replicates(a, tuple(usable), kind) - replicates(b, tuple(usable), kind)
                    rows.append({"benchmark": benchmark, "correlation": kind, "metric_a": a, "metric_b": b,
                                 "n": len(usable)} | _compared(x_a, x_b, y, kind, level=resampling.level,
                                                               differences=differences))
    return pd.DataFrame(rows, columns=["benchmark", "correlation", "metric_a", "metric_b", "n", "r_a", "r_b",
                                       "difference", "ci_low", "ci_high", "p"])
