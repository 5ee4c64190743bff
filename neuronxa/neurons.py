"""Language neurons: which FFN neurons are language-specific, language-related or language-agnostic, where they
sit across layers, how an aligned model differs from its base, and what switching them off breaks.

Input is ``prob[layer, neuron, language]``: the share of a language's tokens on which the neuron is active
(a > 0), from the cached activation counts of stage one.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from neuronxa.benchmarks import log_likelihood
from neuronxa.errors import NeuronXAError
from neuronxa.probes import act_modules, ffn_width

TYPES = ("specific", "related", "agnostic")
LAMBDA_RANGE = (0.0, 0.2)


def probabilities(active: list[np.ndarray], tokens: list[int]) -> np.ndarray:
    """(layers, neurons, languages) activation probabilities from per-language counts and token totals."""
    if any(total <= 0 for total in tokens):
        raise NeuronXAError("a language has no counted tokens: its activation probabilities are undefined")
    return np.stack([counts / total for counts, total in zip(active, tokens)], axis=-1)


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


def _kept(score: np.ndarray, eligible: np.ndarray, top_rate: float) -> np.ndarray:
    """Flat indices of the lowest-score ``top_rate`` share of all neurons, among the eligible ones."""
    k = round(score.size * top_rate)
    candidates = np.flatnonzero(eligible.ravel())
    order = np.argsort(score.ravel()[candidates], kind="stable")
    return candidates[order[:k]]


def _finegrained_score(entropy: np.ndarray, prob: np.ndarray, lam: float) -> np.ndarray:
    """Normalised entropy minus λ times the largest probability, scaled as the anchor code scales it."""
    n_languages = prob.shape[-1]
    norm_max = sum(1 / k for k in range(1, n_languages + 1)) / n_languages
    return entropy - lam * prob.max(axis=-1) / norm_max


def _search_lambda(entropy, prob, eligible, top_rate, bar, eps: float = 1e-3) -> tuple[float, bool]:
    """The largest λ in [0, 0.2] leaving no kept neuron above the bar in every language (bisection)."""
    def fine(lam: float) -> bool:
        kept = _kept(_finegrained_score(entropy, prob, lam), eligible, top_rate)
        return not (prob.reshape(-1, prob.shape[-1])[kept] > bar).all(axis=1).any()

    lo, hi = LAMBDA_RANGE
    if fine(hi):
        return hi, True
    if not fine(lo):
        return lo, False
    while hi - lo > eps:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fine(mid) else (lo, mid)
    return lo, True


def identify(
    prob: np.ndarray,
    method: str = "lape",
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    bar_rate: float = 0.95,
    lam: float | None = None,
) -> pd.DataFrame:
    """Classify neurons from ``prob`` (layers, neurons, languages).

    ``lape`` (Tang et al. 2024) keeps the ``top_rate`` share of all neurons with the lowest entropy over
    languages, among neurons whose largest probability passes the ``filter_rate`` percentile of all
    probabilities; ``finegrained`` ranks by entropy − λ · max probability (λ searched when None). A kept
    neuron belongs to every language whose probability passes the ``bar_rate`` percentile: one language makes
    it ``specific``, 2..K−1 ``related``. A neuron (kept or not) above the bar in every language is ``agnostic``.
    Returns one row per classified neuron: layer, neuron, type, languages (indices along prob's last axis);
    ``attrs`` holds the method, λ and the bar.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 3 or prob.shape[-1] < 2:
        raise NeuronXAError(f"prob must be (layers, neurons, languages) with two languages or more, got {prob.shape}")
    n_languages = prob.shape[-1]
    entropy = normalised_entropy(prob)
    eligible = prob.max(axis=-1) > _percentile_value(prob, filter_rate)
    bar = _percentile_value(prob, bar_rate)
    found = True
    if method == "lape":
        score = entropy
    elif method == "finegrained":
        if lam is None:
            lam, found = _search_lambda(entropy, prob, eligible, top_rate, bar)
            if not found:
                warnings.warn(f"no λ in {list(LAMBDA_RANGE)} leaves every kept neuron out of some language; λ = 0")
        score = _finegrained_score(entropy, prob, lam)
    else:
        raise NeuronXAError(f"unknown method {method!r}: use lape or finegrained")
    above = prob > bar
    rows = {}
    for flat in _kept(score, eligible, top_rate):
        layer, neuron = divmod(int(flat), prob.shape[1])
        languages = tuple(int(i) for i in np.flatnonzero(above[layer, neuron]))
        if 0 < len(languages) < n_languages:
            rows[layer, neuron] = ("specific" if len(languages) == 1 else "related", languages)
    for layer, neuron in zip(*np.nonzero(above.all(axis=-1))):
        rows[int(layer), int(neuron)] = ("agnostic", tuple(range(n_languages)))
    frame = pd.DataFrame([(layer, neuron, kind, languages) for (layer, neuron), (kind, languages) in sorted(rows.items())],
                         columns=["layer", "neuron", "type", "languages"])
    frame.attrs.update(method=method, lam=lam if method == "finegrained" else None, bar=bar, lam_found=found)
    return frame


# --- analysis -----------------------------------------------------------------------------------------------


def counts_by_language(neurons: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Per language: its specific neurons, the related neurons it shares, and the agnostic neurons."""
    rows = []
    for index, language in enumerate(languages):
        mine = neurons[neurons.languages.map(lambda langs, i=index: i in langs)]
        rows.append({"language": language, **{kind: int((mine.type == kind).sum()) for kind in TYPES}})
    return pd.DataFrame(rows)


def by_layer(neurons: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Neurons of each type per layer (all layers, zeros included)."""
    table = pd.crosstab(neurons.layer, neurons.type).reindex(index=range(n_layers), columns=list(TYPES), fill_value=0)
    table.index.name = "layer"
    return table


STAGE_RULE = (
    "language neurons = specific + related per layer, m = their mean over layers; q = the upper-half layer "
    "with the fewest agnostic neurons (the last such). 1 multilingual understanding: the layers before the "
    "first layer with fewer than m language neurons; 2 shared semantic reasoning: from there to the last such "
    "layer before q; 3 multilingual output transformation: from there to q; 4 vocabulary output: the layers "
    "after q, where agnostic neurons rise again"
)


def stages(layers: pd.DataFrame) -> pd.DataFrame:
    """The four stages as layer ranges, located from the per-layer neuron counts by STAGE_RULE."""
    counts = (layers["specific"] + layers["related"]).to_numpy()
    agnostic = layers["agnostic"].to_numpy()
    n = len(counts)
    mean = counts.mean()
    upper = agnostic[n // 2:]
    peak = n // 2 + int(np.flatnonzero(upper == upper.min())[-1])
    below = [layer for layer in range(peak) if counts[layer] < mean]
    first_low = below[0] if below else peak
    last_low = below[-1] if below else peak - 1
    bounds = [(0, first_low - 1), (first_low, last_low), (last_low + 1, peak), (peak + 1, n - 1)]
    names = ["multilingual understanding", "shared semantic reasoning", "multilingual output transformation",
             "vocabulary output"]
    return pd.DataFrame([{"stage": i + 1, "name": name, "first_layer": a, "last_layer": b,
                          "layers": max(b - a + 1, 0)} for i, (name, (a, b)) in enumerate(zip(names, bounds))])


def overlap(neurons: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Language × language: language neurons (specific or related) that both languages have."""
    language_neurons = neurons[neurons.type != "agnostic"]
    sets = [set(language_neurons[language_neurons.languages.map(lambda langs, i=i: i in langs)]
                [["layer", "neuron"]].itertuples(index=False)) for i in range(len(languages))]
    matrix = [[len(a & b) for b in sets] for a in sets]
    return pd.DataFrame(matrix, index=languages, columns=languages)


def compare(base: pd.DataFrame, aligned: pd.DataFrame, languages: list[str], n_layers: int,
            aligned_languages: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base vs aligned: change per type and layer, and per language and type (aligned − base), with each
    language marked as in the aligned set or not (a change outside it is "spontaneous" alignment)."""
    layers = by_layer(aligned, n_layers) - by_layer(base, n_layers)
    per_language = counts_by_language(aligned, languages).set_index("language") - \
        counts_by_language(base, languages).set_index("language")
    if aligned_languages is not None:
        per_language["in_aligned_set"] = [language in aligned_languages for language in per_language.index]
    return layers, per_language.reset_index()


# --- deactivation -------------------------------------------------------------------------------------------


def by_layer_indices(neurons: pd.DataFrame) -> dict[int, list[int]]:
    return {int(layer): sorted(group.neuron.astype(int)) for layer, group in neurons.groupby("layer")}


@contextmanager
def deactivated(model, chosen: dict[int, list[int]]):
    """Zero the activation a of the chosen neurons (layer -> neuron indices) while the block runs."""
    handles = []
    for layer_index, act in enumerate(act_modules(model)):
        indices = chosen.get(layer_index)
        if not indices:
            continue
        index = torch.tensor(indices)

        def zero(module, inputs, output, index=index):
            output = output.clone()
            output[..., index.to(output.device)] = 0
            return output

        handles.append(act.register_forward_hook(zero))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512) -> float:
    nll, tokens = log_likelihood(model, tokenizer, texts, max_length)
    return math.exp(nll / tokens)


def random_like(chosen: dict[int, list[int]], n_neurons: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """Random neurons with as many per layer as ``chosen`` has: the control set."""
    return {layer: sorted(rng.choice(n_neurons, size=len(indices), replace=False).tolist())
            for layer, indices in chosen.items()}


def deactivation_matrix(model, tokenizer, neurons: pd.DataFrame, languages: list[str],
                        texts: dict[str, list[str]], seed: int = 0,
                        max_length: int = 512) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Perplexity change (deactivated − intact) per deactivated language (rows) × evaluated language (columns),
    for each language's own neurons (specific and related) and for random sets of the same size per layer."""
    width = ffn_width(model)
    intact = pd.Series({language: perplexity(model, tokenizer, texts[language], max_length) for language in languages})
    rng = np.random.default_rng(seed)
    own, control = [], []
    for index, language in enumerate(languages):
        chosen = by_layer_indices(neurons[(neurons.type != "agnostic")
                                          & neurons.languages.map(lambda langs: index in langs)])
        for target, sets in ((own, chosen), (control, random_like(chosen, width, rng))):
            with deactivated(model, sets):
                target.append([perplexity(model, tokenizer, texts[e], max_length) - intact[e] for e in languages])
    frame = lambda rows: pd.DataFrame(rows, index=pd.Index(languages, name="deactivated"), columns=languages)
    return frame(own), frame(control), intact
