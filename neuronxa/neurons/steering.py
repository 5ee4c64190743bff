"""Steering with language neurons: the interventions of a run (the source language's neurons zeroed or
mean-patched, the target language's set to a multiple of their mean or scaled, alone and combined), greedy
continuations under each, and what is measured on them: the language an offline identifier gives each
continuation, how much they repeat themselves, and the perplexity of target-language text.

The language identifier is py3langid (langid.py's model of 97 languages, shipped inside the package): it knows
every language of the UDHR default (with Amharic, Quechua, Swahili and Yoruba) and needs no download.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one.forward import length_batches, model_device
from neuronxa.stage_one.positions import padding, same_length

# ISO 639-3 (the corpus's codes without their script) -> the identifier's ISO 639-1 label
IDENTIFIER_LABELS = {
    "eng": "en", "fra": "fr", "deu": "de", "spa": "es", "por": "pt", "ita": "it", "rus": "ru", "pol": "pl",
    "tur": "tr", "zho": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko", "arb": "ar", "ara": "ar", "hin": "hi",
    "vie": "vi", "ind": "id", "swh": "sw", "swa": "sw", "yor": "yo", "amh": "am", "quy": "qu", "que": "qu",
    "tha": "th", "ben": "bn", "ukr": "uk", "nld": "nl", "ces": "cs", "ell": "el", "heb": "he", "fas": "fa",
    "pes": "fa", "urd": "ur", "tam": "ta", "tel": "te", "mar": "mr", "zsm": "ms", "fin": "fi", "hun": "hu",
    "swe": "sv", "dan": "da", "ron": "ro", "bul": "bg", "cat": "ca", "kat": "ka", "hye": "hy", "tgl": "tl",
}
UNKNOWN = "unknown to the identifier"


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def identifier_label(code: str) -> str | None:
    """The identifier's label for a corpus language code (``fra_Latn`` -> ``fr``); None when it does not know
    the language."""
    label = IDENTIFIER_LABELS.get(code.split("_")[0].lower())
    return label if label in _identifier().nb_classes else None


def identify_language(texts: list[str]) -> list[str]:
    """The identifier's label for each text ("" for a text with no letters)."""
    return [_identifier().classify(text)[0] if any(ch.isalpha() for ch in text) else "" for text in texts]


def repeated_ngrams(ids: list[int], n: int = 3) -> float:
    """Share of a token sequence's n-grams that repeat an earlier one (0: no repetition; NaN: too short)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else float("nan")


@dataclass(frozen=True)
class Intervention:
    """One cell of the design: on which neurons (the languages' own, a random set of the same size per layer,
    or none), what happens to the source language's (zero, patch) and to the target language's (set to
    ``strength`` times their mean, or scale by ``strength``)."""

    neurons: str = "none"
    source: str = "none"
    target: str = "none"
    strength: float = float("nan")

    @property
    def mode(self) -> str:
        parts = [f"{role}_{mode}" for role, mode in (("source", self.source), ("target", self.target))
                 if mode != "none"]
        return "+".join(parts) or "none"


def design(source_modes: list[str], target_modes: list[str], strengths: list[float], *,
           combine: list[str]) -> list[Intervention]:
    """No intervention, then for each neuron set (language, random): each source mode alone, each target mode at
    each strength alone, and each source mode of ``combine`` with each target mode at each strength."""
    cells = [Intervention()]
    for neurons in ("language", "random"):
        cells += [Intervention(neurons, source=mode) for mode in source_modes]
        pairs = [("none", t) for t in target_modes] + [(s, t) for s in combine for t in target_modes]
        cells += [Intervention(neurons, s, t, float(k)) for s, t in pairs for k in strengths]
    return cells


@dataclass
class NeuronSet:
    """The source's and the target's neurons (frames with layer, neuron), with the values patching and setting
    use: the source neurons' mean over every language, the target neurons' mean over the target language."""

    source: pd.DataFrame
    target: pd.DataFrame
    patch: np.ndarray = field(repr=False)
    target_mean: np.ndarray = field(repr=False)


@contextmanager
def applied(model, cell: Intervention, sets: dict[str, NeuronSet]) -> Iterator[None]:
    """The cell's interventions while the block runs: the source's first, then the target's (which wins where
    a neuron is in both)."""
    with ExitStack() as stack:
        if cell.neurons != "none":
            chosen = sets[cell.neurons]
            if cell.source == "zero":
                stack.enter_context(intervene(model, chosen.source, "zero"))
            elif cell.source == "patch":
                stack.enter_context(intervene(model, chosen.source, "set", chosen.patch))
            if cell.target == "set":
                stack.enter_context(intervene(model, chosen.target, "set", cell.strength * chosen.target_mean))
            elif cell.target == "scale":
                stack.enter_context(intervene(model, chosen.target, "scale", cell.strength))
        yield


def continuations(model, tokenizer, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """The greedy continuation of each prompt (``new_tokens`` tokens at most, fewer after an end token): token
    ids, prompts batched with left padding (with the id the model reads as padding); where padding would change
    a model's states (BLT), prompts of one length at a time."""
    if not same_length(model):
        return _continued(model, tokenizer, prompts, new_tokens)
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    found = {}
    for group in length_batches(lengths, len(prompts), same_length=True):
        found.update(zip(group, _continued(model, tokenizer, [prompts[i] for i in group], new_tokens)))
    return [found[index] for index in range(len(prompts))]


def _continued(model, tokenizer, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """The greedy continuations of prompts in one batch, left-padded."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model_device(model))
    finally:
        tokenizer.padding_side = side
    pad_id, _ = padding(model, tokenizer)   # the id the model reads as padding (CPM-Ant: 0), else the tokenizer's
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad_id)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id)
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return [[t for t in row.tolist() if t not in ends] for row in out[:, batch["input_ids"].shape[1]:]]


def measured(ids: list[list[int]], tokenizer, target: str) -> pd.DataFrame:
    """Per continuation: its text, the identifier's label, whether that is ``target`` and its repeated 3-grams."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    labels = identify_language(texts)
    wanted = identifier_label(target)
    return pd.DataFrame({"continuation": texts, "identified": labels,
                         "is_target": [label == wanted if wanted else math.nan for label in labels],
                         "repeated_3grams": [repeated_ngrams(row) for row in ids]})
