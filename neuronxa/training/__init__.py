"""Alignment over training: Trainer callbacks that score the live model, and a LoRA translation fine-tune."""
