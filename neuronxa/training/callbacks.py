"""Alignment during training: ``transformers`` callbacks that score the live model every N steps, and a LoRA
translation fine-tune through ``Trainer`` (``peft``) to watch alignment change.

``AlignmentCallback`` scores the model (``live.score_model``: the pipeline's probes and metrics, in memory)
at step 0, every ``every`` steps and at the last step; ``TranslationCallback`` measures greedy translations into
English by chrF (and COMET with a local checkpoint) on the same schedule. Both log their layer-pooled values
through the Trainer's own ``log`` (so MLflow and the other integrations record them with step = training step)
and keep the long form in ``.history``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

from neuronxa.errors import NeuronXAError, check_whole
from neuronxa.stage_two.live import check_texts, evaluating, score_model
from neuronxa.stage_two.scoring import check_layer_pool, summarise

PROMPT = "Translate to English: {source}\nEnglish:"


def calling_trainer() -> Trainer | None:
    """The ``Trainer`` whose training loop is calling the current callback (None outside a Trainer)."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


class EveryNSteps(TrainerCallback):
    """Measures the model at the first step, every ``every`` steps and at the last one; logs each measurement
    through the Trainer (``trainer``, or the Trainer found calling the callback) and keeps ``.history``."""

    def __init__(self, every: int, trainer: Trainer | None = None) -> None:
        check_whole(every, "every", 1)
        self.every = every
        self.trainer = trainer
        self._frames: list[pd.DataFrame] = []
        self._last_step: int | None = None

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
        self.trainer = self.trainer or calling_trainer()
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

    def __init__(self, tokenizer, texts: Mapping[str, Sequence[str]], pivot: str = "eng_Latn",
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

    def __init__(self, tokenizer, sources: Mapping[str, Sequence[str]], references: Sequence[str], every: int = 50,
                 max_new_tokens: int = 128, batch_size: int = 8, comet=None, trainer: Trainer | None = None) -> None:
        super().__init__(every, trainer)
        if any(len(texts) != len(references) for texts in sources.values()):
            raise NeuronXAError("every language needs one source sentence per reference")
        self.tokenizer, self.sources, self.references = tokenizer, dict(sources), list(references)
        self.max_new_tokens, self.batch_size, self.comet = max_new_tokens, batch_size, comet
        self.translations: dict[tuple[int, str], list[str]] = {}

    def measure(self, model, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        import sacrebleu

        rows = []
        for language, sources in self.sources.items():
            hypotheses = translate(model, self.tokenizer, sources, self.max_new_tokens, self.batch_size)
            self.translations[(step, language)] = hypotheses
            rows.append((language, "chrf", sacrebleu.corpus_chrf(hypotheses, [self.references]).score))
            if self.comet is not None:
                rows.append((language, "comet", comet_score(self.comet, sources, hypotheses, self.references)))
        frame = pd.DataFrame(rows, columns=["language", "metric", "value"])
        return frame, {f"{row.metric}.{row.language}": row.value for row in frame.itertuples()}


def translate(model, tokenizer, sources: Sequence[str], max_new_tokens: int = 128,
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


def comet_score(comet, sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """COMET's system score (``comet`` is a model from ``comet.load_from_checkpoint``)."""
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    return float(comet.predict(data, batch_size=8, gpus=0, progress_bar=False).system_score)


def load_comet(checkpoint: str | None):
    """A COMET model from a local checkpoint, or None and why (COMET is optional)."""
    if not checkpoint:
        return None, "COMET skipped: no task.comet_checkpoint (a local COMET checkpoint) given"
    try:
        from comet import load_from_checkpoint
    except ImportError:
        return None, "COMET skipped: unbabel-comet is not installed (pip install unbabel-comet)"
    if not Path(checkpoint).is_file():
        raise NeuronXAError(f"task.comet_checkpoint {checkpoint!r} is not a file: give a downloaded COMET "
                            "checkpoint (checkpoints/model.ckpt) or null")
    return load_from_checkpoint(checkpoint), f"COMET: {checkpoint}"


def translation_examples(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256) -> list[dict]:
    """Causal-LM examples of (source, English) pairs: the prompt then the translation and EOS, with the loss
    on the translation only (prompt labels -100), cut at ``max_length`` tokens."""
    examples = []
    for source, target in pairs:
        prompt = tokenizer(PROMPT.format(source=source))["input_ids"]
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        answer = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + eos
        ids = (prompt + answer)[:max_length]
        labels = ([-100] * len(prompt) + answer)[:max_length]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples


def lora_model(model, rank: int = 8, alpha: int = 16, dropout: float = 0.05,
               target_modules: str | list[str] = "all-linear", seed: int = 0):
    """The model with LoRA adapters (``peft``) on its linear layers (the LM head excluded), initialised from
    ``seed`` (the adapters' A matrices are random: without it two runs would train from different starts)."""
    from peft import LoraConfig, get_peft_model

    check_whole(rank, "task.lora.rank", 1)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules))
    set_seed(seed)
    return get_peft_model(model, config)


def fine_tune(model, tokenizer, examples: list[dict], folder: Path, steps: int, every: int, batch_size: int = 8,
              learning_rate: float = 5e-4, seed: int = 0, callbacks: Sequence[TrainerCallback] = (),
              progress: bool = True) -> Trainer:
    """Train ``model`` (e.g. a LoRA model) on ``examples`` for ``steps`` steps through ``Trainer``, saving a
    checkpoint every ``every`` steps under ``folder`` (with the tokenizer: ``models.load`` reads a LoRA checkpoint
    as its base model with the adapter); returns the trained Trainer."""
    args = TrainingArguments(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, save_strategy="steps",
        save_steps=every, save_only_model=True, logging_steps=1, report_to="none", seed=seed, data_seed=seed,
        use_cpu=model.device.type == "cpu", disable_tqdm=not progress, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                      processing_class=tokenizer, callbacks=list(callbacks))  # checkpoints keep the tokenizer
    trainer.train()
    return trainer
