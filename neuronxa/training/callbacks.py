"""Measuring the model while it trains: ``transformers`` callbacks that score the live model every N steps.

``AlignmentCallback`` scores the model (``live.score_model``: the pipeline's probes and metrics, in memory)
at step 0, every ``every`` steps and at the last step; ``TranslationCallback`` measures greedy translations into
English by chrF (and COMET with a local checkpoint) on the same schedule. Attached to a Trainer (``attach``),
both log their values through the Trainer's own ``log`` (so MLflow and the other integrations record them with
step = training step); both keep the long form in ``.history``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from transformers import Trainer, TrainerCallback

from neuronxa.errors import NeuronXAError, check_whole
from neuronxa.stage_two.live import check_texts, score_model
from neuronxa.stage_two.scoring import check_layer_pool, summarise
from neuronxa.training.translation import chrf, comet_score, translate


class EveryNSteps(TrainerCallback):
    """Measures the model at the first step, every ``every`` steps and at the last one; logs each measurement
    through ``trainer`` (given here or by ``attach``; without one, into the training state's log history) and
    keeps ``.history``."""

    def __init__(self, every: int, trainer: Trainer | None = None) -> None:
        check_whole(every, "every", 1)
        self.every = every
        self.trainer = trainer
        self._frames: list[pd.DataFrame] = []
        self._last_step: int | None = None

    def attach(self, trainer: Trainer) -> EveryNSteps:
        """Log through ``trainer`` and join its callbacks (unless already among them); returns the callback."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def measure(self, model, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        """A long table of what was measured at ``step``, and the single values to log."""
        raise NotImplementedError

    def record(self, model, state, control) -> None:
        """Measure at the current step (once per step), log the values and keep the table."""
        if self._last_step == state.global_step:
            return
        frame, logs = self.measure(model, state.global_step)
        self._frames.append(frame.assign(step=state.global_step))
        self._last_step = state.global_step
        if self.trainer is None:
            state.log_history.append({**logs, "step": state.global_step})
            return
        should_log = control.should_log if control is not None else False
        self.trainer.log(logs)
        if control is not None:
            control.should_log = should_log  # logging resets it: the Trainer's own log of this step still happens

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.record(model, state, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.record(model, state, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.record(model, state, control)

    @property
    def history(self) -> pd.DataFrame:
        """Every measurement so far, with its training step."""
        return pd.concat(self._frames, ignore_index=True) if self._frames else pd.DataFrame()


class AlignmentCallback(EveryNSteps):
    """Scores the model's alignment during training: ``.history`` holds the long form (metric, pivot, language,
    layer, value, n, step); the Trainer logs ``metric.language`` (layer-pooled by ``layer_pool``) per step."""

    def __init__(self, tokenizer, texts: Mapping[str, Sequence[str]], pivot: str = "eng_Latn", *,
                 metrics: Sequence[str] = ("nasca",), every: int = 50, pooling: str = "weighted",
                 layer_pool: str = "mean", batch_size: int = 16, max_length: int = 512,
                 trainer: Trainer | None = None) -> None:
        super().__init__(every, trainer)
        check_texts(texts, pivot)
        check_layer_pool(layer_pool)
        self.tokenizer, self.texts, self.pivot, self.metrics = tokenizer, dict(texts), pivot, tuple(metrics)
        self.pooling, self.layer_pool, self.batch_size, self.max_length = pooling, layer_pool, batch_size, max_length

    def measure(self, model, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        scores = score_model(model, self.tokenizer, self.texts, pivot=self.pivot, metrics=self.metrics,
                             pooling=self.pooling, batch_size=self.batch_size, max_length=self.max_length)
        pooled = summarise(scores, self.layer_pool)
        return scores, {f"{row.metric}.{row.language}": row.score for row in pooled.itertuples()}

    def pooled(self) -> pd.DataFrame:
        """The layer-pooled scores per step: step, metric, language, score."""
        return pooled_by_step(self.history, self.layer_pool)


def pooled_by_step(history: pd.DataFrame, layer_pool: str = "mean") -> pd.DataFrame:
    """Layer-pooled scores (step, metric, language, score) of an alignment history."""
    frames = [summarise(group, layer_pool)[["metric", "language", "score"]].assign(step=step)
              for step, group in history.groupby("step", sort=True)]
    return pd.concat(frames, ignore_index=True)[["step", "metric", "language", "score"]]


class TranslationCallback(EveryNSteps):
    """Translation quality during training: greedy translations of ``sources[language]`` into English against
    ``references``, scored by chrF (``sacrebleu``) and by COMET when ``comet`` (a loaded COMET model) is given.
    ``.history``: language, metric, value, step; the Trainer logs ``chrf.language`` (and ``comet.language``)."""

    def __init__(self, tokenizer, sources: Mapping[str, Sequence[str]], references: Sequence[str], *, every: int = 50,
                 max_new_tokens: int = 128, batch_size: int = 8, comet=None, trainer: Trainer | None = None) -> None:
        super().__init__(every, trainer)
        if any(len(texts) != len(references) for texts in sources.values()):
            raise NeuronXAError("every language needs one source sentence per reference")
        self.tokenizer, self.sources, self.references = tokenizer, dict(sources), list(references)
        self.max_new_tokens, self.batch_size, self.comet = max_new_tokens, batch_size, comet
        self.translations: dict[tuple[int, str], list[str]] = {}

    def measure(self, model, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        rows = []
        for language, sources in self.sources.items():
            hypotheses = translate(model, self.tokenizer, sources, max_new_tokens=self.max_new_tokens,
                                   batch_size=self.batch_size)
            self.translations[(step, language)] = hypotheses
            rows.append((language, "chrf", chrf(hypotheses, self.references)))
            if self.comet is not None:
                rows.append((language, "comet", comet_score(self.comet, sources, hypotheses,
                                                            references=self.references)))
        frame = pd.DataFrame(rows, columns=["language", "metric", "value"])
        return frame, {f"{row.metric}.{row.language}": row.value for row in frame.itertuples()}
