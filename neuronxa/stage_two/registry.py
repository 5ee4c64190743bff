"""The metrics of stage two by name: for each, its kind, the representation(s) it reads, how it is computed on
one layer, and the rule of its interval.

A metric is what one asks for (``nasca``, ``cka``, ``retrieval``); a score is a column it writes to the tables
(``nasca``; ``retrieval.nas.pivot_to_target`` and five more for ``retrieval``). Kinds: ``alignment`` — the weak
alignment score μ of the cosine matrix, on NAS (``nasca``), NAV (``navca``) or hidden states (``mexa``);
``baseline`` — the embedding baselines ``cka``, ``svcca``, ``anc`` on hidden states; ``retrieval`` —
pivot→target, target→pivot and bidirectional nearest-neighbour accuracy, on NAS and on hidden states;
``routing`` — for mixture-of-experts models, μ (``routing``) and the two one-way retrievals of the sentences'
pooled routing weights over the experts, on the MoE layers. Scores
that count units (alignment, retrieval) get Wilson's interval with the half-samples' design effect and a chance
level; the baselines get the normal interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from neuronxa.errors import NeuronXAError
from neuronxa.stage_two import metrics, uncertainty

DIRECTIONS = {"pivot_to_target": "p→t", "target_to_pivot": "t→p", "bidirectional": "both"}  # -> short label
Measured = tuple[float, np.ndarray]   # the value on all units, and the values on each half-sample of them


class Side:
    """One side's units (rows, in the pair's order) with the half-samples of the units: what the baselines
    need of that side alone, computed once when first asked for; the pivot's side is shared by every target
    language with the same units and half-samples."""

    def __init__(self, states: np.ndarray, subsets: np.ndarray) -> None:
        self.states, self.subsets = states, subsets

    @cached_property
    def finite(self) -> bool:
        """No NaN and no infinity (the baselines are NaN otherwise)."""
        return bool(np.isfinite(self.states).all())

    @cached_property
    def half_centred(self) -> np.ndarray:
        """The units' Gram matrix restricted to each half-sample, double-centred: (resamples, b, b)."""
        states = np.asarray(self.states, np.float64)
        return metrics.double_centred(uncertainty.submatrices(states @ states.T, self.subsets))

    @cached_property
    def half_directions(self) -> metrics.Directions:
        """SVCCA's kept directions of each half-sample (``metrics.kept_directions``)."""
        return metrics.kept_directions(self.half_centred)


class LayerPair:
    """One layer's pivot units X and target units Y (rows in the same order) with the half-samples of the units
    (``subsets``, see ``uncertainty``); what several metrics share is computed once, when first asked for. The
    pivot's ``Side`` may come computed already (``pivot``, for X and the same subsets)."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, subsets: np.ndarray, pivot: Side | None = None) -> None:
        self.X, self.Y, self.subsets = X, Y, subsets
        self.sides = (pivot or Side(X, subsets), Side(Y, subsets))

    @cached_property
    def shares(self) -> dict[str, Measured]:
        """Per retrieval direction, the share of units no rival beats, on all units and on each half-sample."""
        by_row, by_column = metrics.beaten(metrics.cosine_matrix(self.X, self.Y))
        beaten = np.stack((by_row, by_column, by_row | by_column))   # the half-samples of all three in one product
        return {direction: (float(np.mean(~beaten_by.any(axis=-1))), halves) for direction, beaten_by, halves
                in zip(DIRECTIONS, beaten, uncertainty.subset_shares(beaten, self.subsets))}

    @property
    def finite(self) -> bool:
        """Neither side holds a NaN or an infinity (the baselines are NaN otherwise)."""
        return all(side.finite for side in self.sides)

    def undefined(self) -> Measured:
        return float("nan"), np.full(len(self.subsets), np.nan)


def _share(direction: str) -> Callable[[LayerPair], Measured]:
    """The share of units aligned in ``direction`` (bidirectional: μ)."""
    return lambda pair: pair.shares[direction]


def _cka(pair: LayerPair) -> Measured:
    halves = (side.half_centred for side in pair.sides)
    return (metrics.linear_cka(pair.X, pair.Y), metrics.cka_of_centred(*halves)) if pair.finite \
        else pair.undefined()


def _svcca(pair: LayerPair) -> Measured:
    halves = (side.half_directions for side in pair.sides)
    return (metrics.svcca(pair.X, pair.Y), metrics.svcca_of_directions(*halves)) if pair.finite \
        else pair.undefined()


def _anc(pair: LayerPair) -> Measured:
    return (metrics.anc(pair.X, pair.Y), metrics.subset_neuron_correlations(pair.X, pair.Y, pair.subsets)) \
        if pair.finite else pair.undefined()


@dataclass(frozen=True)
class Score:
    """One column a metric writes per language and layer: its name in the tables, its metric and kind, the
    representation it reads, how it is measured on one layer, and its interval (value, half-sample values, n,
    level) -> (low, high)."""
    name: str
    metric: str
    kind: str
    representation: str
    measure: Callable[[LayerPair], Measured]
    interval: Callable[..., tuple[float, float]]
    direction: str | None = None

    @property
    def counts_units(self) -> bool:
        """A share of units (k of n), for which the binomial chance level applies."""
        return self.kind != "baseline"

    @property
    def headline(self) -> bool:
        """Plotted by the alignment task: every score but retrieval's one-way directions."""
        return self.direction in (None, "bidirectional")

    @property
    def label(self) -> str:
        """A narrow column name: retrieval.nas.pivot_to_target -> R.nas.p→t."""
        return self.name if self.direction is None else f"R.{self.representation}.{DIRECTIONS[self.direction]}"


@dataclass(frozen=True)
class Metric:
    """A metric one asks for by name: its kind and the scores it writes."""
    name: str
    kind: str
    scores: tuple[Score, ...]

    @property
    def representations(self) -> tuple[str, ...]:
        """The state kinds it reads, in the order of its scores."""
        return tuple(dict.fromkeys(score.representation for score in self.scores))


def _alignment(name: str, representation: str) -> Metric:
    score = Score(name, name, "alignment", representation, _share("bidirectional"), uncertainty.share_interval)
    return Metric(name, "alignment", (score,))


def _baseline(name: str, measure: Callable[[LayerPair], Measured]) -> Metric:
    return Metric(name, "baseline", (Score(name, name, "baseline", "hidden", measure, uncertainty.normal_interval),))


def _retrieval(representations: tuple[str, ...]) -> Metric:
    scores = tuple(Score(f"retrieval.{representation}.{direction}", "retrieval", "retrieval", representation,
                         _share(direction), uncertainty.share_interval, direction)
                   for representation in representations for direction in DIRECTIONS)
    return Metric("retrieval", "retrieval", scores)


def _routing() -> Metric:
    """Does a language route like the pivot? μ of the routing weights' cosines, and the one-way retrievals."""
    scores = tuple(Score("routing" if direction == "bidirectional" else f"retrieval.routing.{direction}", "routing",
                         "routing", "routing", _share(direction), uncertainty.share_interval,
                         None if direction == "bidirectional" else direction) for direction in DIRECTIONS)
    return Metric("routing", "routing", scores)


METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    _alignment("nasca", "nas"), _alignment("navca", "nav"), _alignment("mexa", "hidden"),
    _baseline("cka", _cka), _baseline("svcca", _svcca), _baseline("anc", _anc),
    _retrieval(("nas", "hidden")), _routing())}
SCORES: dict[str, Score] = {score.name: score for metric in METRICS.values() for score in metric.scores}


def metric(name: str) -> Metric:
    """The metric of this name; one line naming the known ones otherwise."""
    if name not in METRICS:
        raise NeuronXAError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
    return METRICS[name]


def score(name: str) -> Score:
    """The score of this name (a column of the scores table)."""
    if name not in SCORES:
        raise NeuronXAError(f"unknown score {name!r}: known are {', '.join(SCORES)}")
    return SCORES[name]


def representations(names: Iterable[str]) -> list[str]:
    """The state kinds the named metrics read, sorted."""
    return sorted({kind for name in names for kind in metric(name).representations})


def of_kind(kind: str) -> list[str]:
    """The names of the metrics of one kind (alignment, baseline, retrieval), in the registry's order."""
    return [name for name, entry in METRICS.items() if entry.kind == kind]
