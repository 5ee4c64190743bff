"""Scores of a model in memory: stage one's probes and stage two's metrics on texts, without cache or config
(``score_model``; the training callbacks score the live model through it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one.forward import PooledStates, pooled_states, split_states
from neuronxa.stage_one.pooling import check_pooling
from neuronxa.stage_two import registry
from neuronxa.stage_two.scoring import score


class StatesInMemory:
    """Pooled states held in memory (one ``PooledStates`` per language, units in the same order), read as
    ``score`` reads a ``StateStore``."""

    def __init__(self, states: dict[str, PooledStates]) -> None:
        self.states = states

    def languages(self) -> list[str]:
        return list(self.states)

    def ids(self, language: str) -> list[str]:
        return [str(unit) for unit in range(len(self.states[language].n_tokens))]

    def layers(self, language: str, kind: str, pooling: str) -> list[np.ndarray]:
        return list(self.states[language][kind][pooling])


def unwrapped(model):
    """The transformers model inside a ``peft`` wrapper (LoRA layers stay in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def evaluating(model) -> Iterator:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_texts(texts: Mapping[str, Sequence[str]], pivot: str) -> None:
    """Parallel texts: the pivot among the languages, the same number (at least two) of units in each."""
    if pivot not in texts:
        raise NeuronXAError(f"pivot {pivot!r} is not among the texts' languages ({', '.join(texts)})")
    sizes = {language: len(units) for language, units in texts.items()}
    if len(set(sizes.values())) != 1 or sizes[pivot] < 2:
        raise NeuronXAError(f"texts must be parallel, at least two units per language, the same number in each: "
                            f"got {sizes}")


def score_model(model, tokenizer, texts: Mapping[str, Sequence[str]], *, pivot: str = "eng_Latn",
                metrics: Sequence[str] = ("nasca", "navca", "mexa"), pooling: str = "weighted",
                batch_size: int = 16, max_length: int = 512, skip_bos: bool = False,
                layers: int | None = None) -> pd.DataFrame:
    """Scores of a model in memory (no cache, no config): the long table ``score`` gives (metric, pivot,
    language, layer, value, n) for ``texts`` (language -> parallel sentences, the i-th of each language being
    translations), through stage one's probes and stage two's metrics. A ``peft`` model is scored with its
    adapters; the model is put in eval mode for the pass and back in its mode afterwards."""
    check_texts(texts, pivot)
    check_pooling(pooling)
    kinds = tuple(registry.representations(metrics))
    languages = list(texts)
    with evaluating(model):
        states = pooled_states(unwrapped(model), tokenizer, [text for lang in languages for text in texts[lang]],
                               poolings=(pooling,), batch_size=batch_size, max_length=max_length, kinds=kinds,
                               skip_bos=skip_bos, layers=layers)
    parts = split_states(states, [len(texts[language]) for language in languages])
    scores, _ = score(StatesInMemory(dict(zip(languages, parts))), list(metrics), pooling, pivot=pivot,
                      progress=False)
    return scores
