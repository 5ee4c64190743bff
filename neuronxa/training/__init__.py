"""Alignment over training: Trainer callbacks that score the live model, a LoRA translation fine-tune, and the
translation quality (chrF, COMET) it is measured against."""
