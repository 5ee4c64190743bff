"""A LoRA translation fine-tune: (source, English) pairs as causal-LM examples, LoRA adapters (``peft``) seeded
without touching the global random generators, and training through ``transformers.Trainer``.

Options are the libraries' own: ``lora_model`` takes ``peft.LoraConfig``'s fields and ``fine_tune``
``transformers.TrainingArguments``' fields, each over the defaults below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from neuronxa.errors import check_whole
from neuronxa.training.callbacks import EveryNSteps
from neuronxa.training.translation import PROMPT

LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "task_type": "CAUSAL_LM",
                 "target_modules": "all-linear"}   # every linear layer but the LM head
TRAINER_DEFAULTS = {
    "per_device_train_batch_size": 8, "learning_rate": 5e-4, "lr_scheduler_type": "constant", "warmup_steps": 0,
    "train_sampling_strategy": "group_by_length",   # batches of similar length: little padding
    "save_strategy": "steps", "save_only_model": True, "logging_steps": 1, "report_to": "none",
    "dataloader_num_workers": 0,
}


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


def lora_model(model, *, seed: int = 0, **lora):
    """The model with LoRA adapters (``peft``) as ``peft.LoraConfig`` makes them from ``lora`` over
    ``LORA_DEFAULTS``. The adapters' A matrices are random: they are drawn from ``seed`` inside
    ``torch.random.fork_rng``, so two runs train from the same start and the global generators stay as they were."""
    from peft import LoraConfig, get_peft_model

    options = {**LORA_DEFAULTS, **lora}
    check_whole(options["r"], "r", 1)
    config = LoraConfig(**options)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def fine_tune(model, tokenizer, examples: list[dict], *, folder: Path, every: int, seed: int = 0,
              callbacks: Sequence[TrainerCallback] = (), progress: bool = True, **arguments) -> Trainer:
    """Train ``model`` (e.g. a LoRA model) on ``examples`` through ``Trainer`` with
    ``TrainingArguments`` from ``arguments`` (``max_steps``, ``learning_rate``, ...) over ``TRAINER_DEFAULTS``, saving a
    checkpoint every ``every`` steps under ``folder`` (with the tokenizer: ``models.load`` reads a LoRA checkpoint
    as its base model with the adapter). Measuring callbacks (``EveryNSteps``) are attached to the Trainer, so
    they log through it; returns the trained Trainer."""
    args = TrainingArguments(**{
        "output_dir": str(folder), **TRAINER_DEFAULTS, "save_steps": every, "seed": seed, "data_seed": seed,
        "use_cpu": model.device.type == "cpu", "disable_tqdm": not progress, **arguments})
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                      processing_class=tokenizer, callbacks=list(callbacks))  # checkpoints keep the tokenizer
    for callback in callbacks:
        if isinstance(callback, EveryNSteps):
            callback.attach(trainer)
    trainer.train()
    return trainer
