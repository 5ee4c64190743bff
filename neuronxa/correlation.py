"""Correlation across target languages between a model's per-language scores and its benchmark results."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

MIN_LANGUAGES = 3


def correlate(summary: pd.DataFrame, benchmarks: pd.DataFrame, pivot: str) -> pd.DataFrame:
    """Pearson r and Spearman ρ (with p-values and n) per metric × benchmark, over the languages both sides
    have, the pivot excluded. Dropped languages are listed; under three shared languages there is no
    correlation, and the ``note`` column says so.
    """
    rows = []
    for metric, scores in summary.groupby("metric", sort=False):
        by_language = scores.set_index("language")["score"].drop(pivot, errors="ignore")
        for benchmark, results in benchmarks.groupby("benchmark", sort=False):
            values = results.groupby("language")["value"].mean().drop(pivot, errors="ignore")
            shared = [language for language in by_language.index if language in values.index]
            usable = [lang for lang in shared if np.isfinite(by_language[lang]) and np.isfinite(values[lang])]
            dropped = sorted((set(by_language.index) | set(values.index)) - set(usable))
            row = {"metric": metric, "benchmark": benchmark, "n": len(usable), "languages": " ".join(usable),
                   "dropped": " ".join(dropped), "pearson_r": np.nan, "pearson_p": np.nan,
                   "spearman_rho": np.nan, "spearman_p": np.nan, "note": ""}
            x, y = by_language[usable].to_numpy(float), values[usable].to_numpy(float)
            if len(usable) < MIN_LANGUAGES:
                row["note"] = f"only {len(usable)} shared language(s); a correlation needs {MIN_LANGUAGES}"
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                row["note"] = "one side is constant across languages: no correlation is defined"
            else:
                row["pearson_r"], row["pearson_p"] = map(float, pearsonr(x, y))
                row["spearman_rho"], row["spearman_p"] = map(float, spearmanr(x, y))
            rows.append(row)
    return pd.DataFrame(rows)
