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

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.likelihood import perplexity
from neuronxa.stage_one.probes import act_modules, ffn_width

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


def _search_lambda(entropy, prob, eligible, top_rate, bar, eps: float = 1e-3) -> float | None:
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


def check_options(method: str, top_rate: float, bar_rate: float, filter_rate: float | None = None,
                  lam: float | None = None) -> None:
    """The identification options, each in its range (the command line calls this before any forward pass)."""
    if method not in METHODS:
        raise NeuronXAError(f"unknown method {method!r}: use {' or '.join(METHODS)}")
    for name, value, ok, rule in (("top_rate", top_rate, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("bar_rate", bar_rate, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("filter_rate", filter_rate, lambda v: 0 <= v <= 1, "in [0, 1] or null"),
                                  ("lam", lam, lambda v: v >= 0, "at least 0 or null")):
        if value is None and name in ("filter_rate", "lam"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise NeuronXAError(f"task.{name} must be a number {rule}, not {value!r}")


def neuron_type(n_found: int, n_languages: int) -> str:
    """A neuron's type from how many of the K languages it belongs to: 1 specific, 2..K−1 related, K agnostic."""
    return "specific" if n_found == 1 else "agnostic" if n_found == n_languages else "related"


def _selection(prob: np.ndarray, method: str, top_rate: float, filter_rate: float | None, bar: float,
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
        lam = _search_lambda(entropy, prob, eligible, top_rate, bar)
        if lam is None:
            warnings.warn(f"no λ in {list(LAMBDA_RANGE)} leaves every kept neuron out of some language; λ = 0")
            lam, found = LAMBDA_RANGE[0], False
    return _kept(_finegrained_score(entropy, prob, lam), eligible, top_rate), lam, found


def identify(
    prob: np.ndarray,
    method: str = "finegrained",
    top_rate: float = 0.01,
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
    check_options(method, top_rate, bar_rate, filter_rate, lam)
    n_languages = prob.shape[-1]
    bar = _percentile_value(prob, bar_rate)
    kept, used_lam, found = _selection(prob, method, top_rate, filter_rate, bar, lam)
    above = prob > bar
    rows = {}
    for flat in kept:
        layer, neuron = divmod(int(flat), prob.shape[1])
        languages = tuple(int(i) for i in np.flatnonzero(above[layer, neuron]))
        if languages:
            rows[layer, neuron] = (neuron_type(len(languages), n_languages), languages, True)
    for layer, neuron in zip(*np.nonzero(above.all(axis=-1))):
        rows.setdefault((int(layer), int(neuron)), ("agnostic", tuple(range(n_languages)), False))
    frame = pd.DataFrame([(layer, neuron, *row) for (layer, neuron), row in sorted(rows.items())],
                         columns=["layer", "neuron", "type", "languages", "kept"])
    frame.attrs.update(method=method, lam=used_lam, bar=bar, lam_found=found)
    return frame


# --- analysis -----------------------------------------------------------------------------------------------


def counts_by_language(neurons: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Per language: its specific neurons, the related neurons it shares, and the agnostic neurons."""
    rows = []
    for index, language in enumerate(languages):
        mine = neurons[[index in langs for langs in neurons.languages]]
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
    sets = [{(row.layer, row.neuron) for row in language_neurons.itertuples() if i in row.languages}
            for i in range(len(languages))]
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


def in_mask(neurons: pd.DataFrame, language: int | None = None) -> pd.DataFrame:
    """The rows an anchors' mask holds (the kept neurons; without a ``kept`` column, the non-agnostic ones),
    only those of ``language`` when given."""
    rows = neurons[neurons["kept"]] if "kept" in neurons else neurons[neurons.type != "agnostic"]
    return rows if language is None else rows[[language in langs for langs in rows.languages]]


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


def random_like(chosen: dict[int, list[int]], n_neurons: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """Random neurons with as many per layer as ``chosen`` has: the control set."""
    return {layer: sorted(rng.choice(n_neurons, size=len(indices), replace=False).tolist())
            for layer, indices in chosen.items()}


def deactivation_matrix(model, tokenizer, neurons: pd.DataFrame, languages: list[str],
                        texts: dict[str, list[str]], seed: int = 0,
                        max_length: int = 512) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Perplexity change (deactivated − intact) per deactivated language (rows) × evaluated language (columns),
    for each language's own neurons (its mask: kept neurons above the bar in it) and for random sets of the same
    size per layer."""
    width = ffn_width(model)
    intact = pd.Series({language: perplexity(model, tokenizer, texts[language], max_length) for language in languages})
    rng = np.random.default_rng(seed)
    own, control = [], []
    for index, language in enumerate(languages):
        chosen = by_layer_indices(in_mask(neurons, index))
        for target, sets in ((own, chosen), (control, random_like(chosen, width, rng))):
            with deactivated(model, sets):
                target.append([perplexity(model, tokenizer, texts[e], max_length) - intact[e] for e in languages])
    frame = lambda rows: pd.DataFrame(rows, index=pd.Index(languages, name="deactivated"), columns=languages)
    return frame(own), frame(control), intact
