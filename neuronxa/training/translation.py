"""Translation into English with the model being trained: the prompt, greedy translations, and their quality
by chrF (``sacrebleu``) and COMET (``unbabel-comet``, optional, from a local checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from neuronxa.errors import NeuronXAError
from neuronxa.stage_two.live import evaluating

PROMPT = "Translate to English: {source}\nEnglish:"


def translate(model, tokenizer, sources: Sequence[str], *, max_new_tokens: int = 128,
              batch_size: int = 8) -> list[str]:
    """Greedy translations into English (``PROMPT``), each cut at its first line break."""
    outputs: list[str] = []
    stops = [token for token in [tokenizer.eos_token_id, *line_break_tokens(tokenizer)] if token is not None]
    with evaluating(model), torch.inference_mode():
        for start in range(0, len(sources), batch_size):
            prompts = [PROMPT.format(source=source) for source in sources[start : start + batch_size]]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, top_p=None,
                                       top_k=None, temperature=None, eos_token_id=stops or None,
                                       pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            outputs += [text.strip().split("\n")[0].strip() for text in texts]
    return outputs


def line_break_tokens(tokenizer) -> list[int]:
    """The token that a lone line break encodes to (generation stops there), if it is a single token."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return ids if len(ids) == 1 else []


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF of ``hypotheses`` against one reference each (``sacrebleu``)."""
    import sacrebleu

    return sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score


def comet_score(comet, sources: Sequence[str], hypotheses: Sequence[str], *, references: Sequence[str]) -> float:
    """COMET's system score (``comet`` is a model from ``comet.load_from_checkpoint``)."""
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    return float(comet.predict(data, batch_size=8, gpus=0, progress_bar=False).system_score)


def load_comet(checkpoint: str | None):
    """A COMET model from a local checkpoint, or None and why (COMET is optional)."""
    if not checkpoint:
        return None, "COMET skipped: no local COMET checkpoint given"
    try:
        from comet import load_from_checkpoint
    except ImportError:
        return None, "COMET skipped: unbabel-comet is not installed (pip install unbabel-comet)"
    if not Path(checkpoint).is_file():
        raise NeuronXAError(f"COMET checkpoint {checkpoint!r} is not a file: give a downloaded COMET checkpoint "
                            "(checkpoints/model.ckpt)")
    return load_from_checkpoint(checkpoint), f"COMET: {checkpoint}"
