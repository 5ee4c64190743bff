"""Identifying language neurons: which FFN neurons are language-specific, language-related or
language-agnostic, by LAPE or by the fine-grained rule (with its λ search).

Input is ``prob[layer, neuron, language]``: the share of a language's tokens on which the neuron is active
(a > 0), from the cached activation counts of stage one. Output is one row per classified neuron.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from neuronxa.errors import NeuronXAError

TYPES = ("specific", "related", "agnostic")
LAMBDA_RANGE = (0.0, 0.2)


METHODS = ("finegrained", "lape")
DEFAULT_FILTER = {"lape": 0.95, "finegrained": None}   # the anchors' own: LAPE filters, the fine-grained rule does not


def probabilities(active: list[np.ndarray], tokens: list[int]) -> np.ndarray:
    """(layers, neurons, languages) activation probabilities from per-language counts and token totals, divided
    in float32 as both anchors' code divides (so a bar and the probabilities compare exactly as theirs do)."""
    if any(total <= 0 for total in tokens):
        raise NeuronXAError("a language has no counted tokens: its activation probabilities are undefined")
    return np.stack([np.asarray(counts, dtype=np.float32) / np.float32(total)
                     for counts, total in zip(active, tokens)], axis=-1)


def _percentile_value(prob: np.ndarray, rate: float) -> float:
    """The k-th smallest of all probabilities, k = round(size · rate) (torch's kthvalue, as LAPE uses)."""
    flat = prob.ravel()
    k = min(max(round(flat.size * rate), 1), flat.size)
    return float(np.partition(flat, k - 1)[k - 1])


def normalised_entropy(prob: np.ndarray) -> np.ndarray:
    """Entropy over languages of each neuron's probabilities normalised to sum to one, divided by log K."""
    total = prob.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(total > 0, prob / total, 0.0)
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return -terms.sum(axis=-1) / math.log(prob.shape[-1])


def clamped_entropy(prob: np.ndarray) -> np.ndarray:
    """The fine-grained rule's entropy, as its authors' code computes it: a neuron that never fires is uniform;
    shares are clamped at 1e-12 and renormalised; H = −Σ q log(q + 1e-30), divided by log K."""
    total = prob.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(total > 0, prob / total, 1.0 / prob.shape[-1])
    q = np.maximum(q, 1e-12)
    q = q / q.sum(axis=-1, keepdims=True)
    return -(q * np.log(q + 1e-30)).sum(axis=-1) / math.log(prob.shape[-1])


def _kept(score: np.ndarray, eligible: np.ndarray | None, top_rate: float) -> np.ndarray:
    """Flat indices of the lowest-score ``top_rate`` share of all neurons (among the eligible ones, if given).
    Equal scores are taken in (layer, neuron) order: the anchors' ``topk`` leaves that order unspecified."""
    k = round(score.size * top_rate)
    candidates = np.arange(score.size) if eligible is None else np.flatnonzero(eligible.ravel())
    order = np.argsort(score.ravel()[candidates], kind="stable")
    return candidates[order[:k]]


def _finegrained_score(entropy: np.ndarray, prob: np.ndarray, lam: float) -> np.ndarray:
    """Normalised entropy minus λ times the largest probability, scaled as the anchor code scales it."""
    n_languages = prob.shape[-1]
    norm_max = sum(1 / k for k in range(1, n_languages + 1)) / n_languages
    return entropy - lam * prob.max(axis=-1) / norm_max


def _search_lambda(entropy: np.ndarray, prob: np.ndarray, eligible: np.ndarray | None, *, top_rate: float,
                   bar: float, eps: float = 1e-3) -> float | None:
    """The λ search of the fine-grained rule's authors (``autosweep``): λ is fine when no kept neuron passes the
    bar in all K languages; try both ends of [0, 0.2], then bisect down to ``eps`` (a fine midpoint moves the
    lower end up, any other the upper end down) and return the last fine λ tried, or None if none was."""
    def fine(lam: float) -> bool:
        kept = _kept(_finegrained_score(entropy, prob, lam), eligible, top_rate)
        return not (prob.reshape(-1, prob.shape[-1])[kept] > bar).all(axis=1).any()

    lo, hi = LAMBDA_RANGE
    best = hi if fine(hi) else lo if fine(lo) else None
    while hi - lo > eps:
        mid = (lo + hi) / 2
        if fine(mid):
            best, lo = mid, mid
        else:
            hi = mid
    return best


def check_options(method: str, top_rate: float, bar_rate: float, *, filter_rate: float | None = None,
                  lam: float | None = None) -> None:
    """The identification options, each in its range (callers check them before any forward pass)."""
    if method not in METHODS:
        raise NeuronXAError(f"unknown method {method!r}: use {' or '.join(METHODS)}")
    for name, value, ok, rule in (("top_rate", top_rate, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("bar_rate", bar_rate, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("filter_rate", filter_rate, lambda v: 0 <= v <= 1, "in [0, 1] or null"),
                                  ("lam", lam, lambda v: v >= 0, "at least 0 or null")):
        if value is None and name in ("filter_rate", "lam"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise NeuronXAError(f"{name} must be a number {rule}, not {value!r}")


def neuron_type(n_found: int, n_languages: int) -> str:
    """A neuron's type from how many of the K languages it belongs to: 1 specific, 2..K−1 related, K agnostic."""
    return "specific" if n_found == 1 else "agnostic" if n_found == n_languages else "related"


def _selection(prob: np.ndarray, method: str, top_rate: float, *, filter_rate: float | None, bar: float,
               lam: float | None) -> tuple[np.ndarray, float | None, bool]:
    """Flat indices of the kept neurons, the λ used (None for LAPE) and whether a λ search found one."""
    if filter_rate is None:
        filter_rate = DEFAULT_FILTER[method]
    eligible = prob.max(axis=-1) > _percentile_value(prob, filter_rate) if filter_rate else None
    if method == "lape":
        return _kept(normalised_entropy(prob), eligible, top_rate), None, True
    entropy = clamped_entropy(prob)
    found = True
    if lam is None:
        lam = _search_lambda(entropy, prob, eligible, top_rate=top_rate, bar=bar)
        if lam is None:
            warnings.warn(f"no λ in {list(LAMBDA_RANGE)} leaves every kept neuron out of some language; λ = 0")
            lam, found = LAMBDA_RANGE[0], False
    return _kept(_finegrained_score(entropy, prob, lam), eligible, top_rate), lam, found


def identify(
    prob: np.ndarray,
    method: str = "finegrained",
    top_rate: float = 0.01,
    *,
    filter_rate: float | None = None,
    bar_rate: float = 0.95,
    lam: float | None = None,
) -> pd.DataFrame:
    """Classify neurons from ``prob`` (layers, neurons, languages).

    ``finegrained`` (the language-neurons paper's code, the default) ranks all neurons by entropy − λ · max
    probability (λ searched by the authors' bisection when None); ``lape`` (Tang et al. 2024) ranks by entropy
    among neurons whose largest probability passes the ``filter_rate`` percentile of all probabilities. Both keep
    the ``top_rate`` share of all neurons with the lowest score. ``filter_rate`` None is each method's own
    (LAPE 0.95, fine-grained no filter); 0 turns the filter off. A kept neuron belongs to every language whose
    probability passes the ``bar_rate`` percentile: one language makes it ``specific``, 2..K−1 ``related``. A
    neuron (kept or not) above the bar in every language is ``agnostic``. One row per classified neuron: layer,
    neuron, type, languages (indices along prob's last axis), kept (in the top-rate selection, i.e. in the
    anchors' mask); ``attrs`` holds the method, λ, the bar and whether a λ search found one.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 3 or prob.shape[-1] < 2:
        raise NeuronXAError(f"prob must be (layers, neurons, languages) with two languages or more, got {prob.shape}")
    check_options(method, top_rate, bar_rate, filter_rate=filter_rate, lam=lam)
    bar = _percentile_value(prob, bar_rate)
    kept, used_lam, found = _selection(prob, method, top_rate, filter_rate=filter_rate, bar=bar, lam=lam)
    frame = _classified(kept, prob > bar)
    frame.attrs.update(method=method, lam=used_lam, bar=bar, lam_found=found)
    return frame


def _classified(kept: np.ndarray, above: np.ndarray) -> pd.DataFrame:
    """The table of ``identify``: each kept neuron (flat index) above the bar in some language, typed by how many,
    and every neuron above the bar in all languages as agnostic."""
    n_languages = above.shape[-1]
    rows = {}
    for flat in kept:
        layer, neuron = divmod(int(flat), above.shape[1])
        languages = tuple(int(i) for i in np.flatnonzero(above[layer, neuron]))
        if languages:
            rows[layer, neuron] = (neuron_type(len(languages), n_languages), languages, True)
    for layer, neuron in zip(*np.nonzero(above.all(axis=-1))):
        rows.setdefault((int(layer), int(neuron)), ("agnostic", tuple(range(n_languages)), False))
    return pd.DataFrame([(layer, neuron, *row) for (layer, neuron), row in sorted(rows.items())],
                        columns=["layer", "neuron", "type", "languages", "kept"])


def in_mask(neurons: pd.DataFrame, language: int | None = None) -> pd.DataFrame:
    """The rows an anchors' mask holds (the kept neurons; without a ``kept`` column, the non-agnostic ones),
    only those of ``language`` when given."""
    rows = neurons[neurons["kept"]] if "kept" in neurons else neurons[neurons.type != "agnostic"]
    return rows if language is None else rows[np.array([language in langs for langs in rows.languages], dtype=bool)]
