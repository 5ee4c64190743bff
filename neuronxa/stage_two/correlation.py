"""Correlation across target languages between a model's per-language scores and its benchmark results, with
intervals and exact tests, and the comparison of two metrics' correlations with the same benchmark."""

from __future__ import annotations

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


class _Shared:
    """What the comparisons with one benchmark share, computed once per metric and set of languages: the
    scores and results as arrays, each metric's correlation with the benchmark, and its values on the bootstrap
    draws (the draws depend only on the number of languages and the seed, so every pair's draws are the same
    and a paired difference is the difference of the two metrics' values)."""

    def __init__(self, scores: dict[str, pd.Series], values: pd.Series, resampling: Resampling) -> None:
        self.series, self.resampling = {**scores, "": values}, resampling   # "": the benchmark's results
        self.array, self.correlation, self.replicates = cache(self._array), cache(self._correlation), \
            cache(self._replicates)

    def _array(self, metric: str, languages: tuple[str, ...]) -> np.ndarray:
        return self.series[metric][list(languages)].to_numpy(float)

    def _correlation(self, metric: str, languages: tuple[str, ...], kind: str) -> float:
        return float(uncertainty.CORRELATIONS[kind](self.array(metric, languages), self.array("", languages)))

    def _replicates(self, metric: str, languages: tuple[str, ...], kind: str) -> np.ndarray:
        draws = uncertainty.language_resamples(len(languages), self.resampling.bootstrap, self.resampling.seed)
        return uncertainty.correlation_replicates(self.array(metric, languages), self.array("", languages), kind,
                                                  draws)

    def compared(self, a: str, b: str, languages: tuple[str, ...], kind: str) -> dict:
        """Two metrics' correlations with the benchmark: Williams' p, and the paired bootstrap interval."""
        r_a, r_b = self.correlation(a, languages, kind), self.correlation(b, languages, kind)
        r_ab = float(uncertainty.CORRELATIONS[kind](self.array(a, languages), self.array(b, languages)))
        differences = self.replicates(a, languages, kind) - self.replicates(b, languages, kind)
        low, high = uncertainty.percentile_interval(differences, self.resampling.level)
        return {"r_a": r_a, "r_b": r_b, "difference": r_a - r_b, "ci_low": low, "ci_high": high,
                "p": uncertainty.williams_p(r_a, r_b, r_ab, len(languages))}


def compare(summary: pd.DataFrame, benchmarks: pd.DataFrame, pivot: str,
            resampling: Resampling = Resampling()) -> pd.DataFrame:
    """For each benchmark, every pair of metrics' correlations (Pearson, and Spearman on ranks) over the
    languages all three have: the difference, a paired bootstrap interval over languages, and Williams' t
    test for dependent overlapping correlations (the two metrics are measured on the same languages)."""
    scores = _by_language(summary, pivot)
    names = list(scores)
    rows = []
    for benchmark, values in _results(benchmarks, pivot).items():
        shared = _Shared(scores, values, resampling)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                usable = tuple(_usable(scores[a], scores[b], values))
                x_a, x_b, y = (shared.array(name, usable) for name in (a, b, ""))
                if len(usable) < 4 or min(np.ptp(x_a), np.ptp(x_b), np.ptp(y)) == 0 or np.array_equal(x_a, x_b):
                    continue  # Williams' t needs four languages, three varying sides and two different scores
                rows += [{"benchmark": benchmark, "correlation": kind, "metric_a": a, "metric_b": b,
                          "n": len(usable)} | shared.compared(a, b, usable, kind) for kind in uncertainty.CORRELATIONS]
    return pd.DataFrame(rows, columns=["benchmark", "correlation", "metric_a", "metric_b", "n", "r_a", "r_b",
                                       "difference", "ci_low", "ci_high", "p"])
