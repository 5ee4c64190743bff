"""NeuronXA: how well a language model aligns languages, measured from the neurons of its feed-forward layers,
and which of those neurons are language-specific.

The public API; each name is imported from its module on first use, so ``import neuronxa`` loads no model
library::

    from neuronxa import load, pooled_states, score_model, identify
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    # data: parallel corpora
    "ParallelCorpus": "neuronxa.data.corpus",
    "read_corpus": "neuronxa.data.readers",
    # stage one: models, the probed forward pass, the cache
    "load": "neuronxa.stage_one.models",
    "pooled_states": "neuronxa.stage_one.forward",
    "activation_counts": "neuronxa.stage_one.forward",
    "StageOneOptions": "neuronxa.stage_one.options",
    "extract_corpus": "neuronxa.stage_one.cache",
    "extract_counts": "neuronxa.stage_one.cache",
    "StateStore": "neuronxa.stage_one.store",
    "perplexity": "neuronxa.stage_one.likelihood",
    "Sites": "neuronxa.stage_one.sites",
    "find_sites": "neuronxa.stage_one.sites",
    "name_sites": "neuronxa.stage_one.sites",
    "skipped_layers": "neuronxa.stage_one.skipped",
    "on_a": "neuronxa.stage_one.probes",
    "layer_ffn": "neuronxa.stage_one.ffn_lists",
    "layer_widths": "neuronxa.stage_one.probes",
    "edit_hooks": "neuronxa.stage_one.probes",
    # stage two: scores, baselines, correlations
    "score_model": "neuronxa.stage_two.live",
    "score": "neuronxa.stage_two.scoring",
    "summarise": "neuronxa.stage_two.scoring",
    "pairwise": "neuronxa.stage_two.pairwise",
    "correlate": "neuronxa.stage_two.correlation",
    "cosine_matrix": "neuronxa.stage_two.metrics",
    "chance_pvalue": "neuronxa.stage_two.metrics",
    "linear_cka": "neuronxa.stage_two.metrics",
    "svcca": "neuronxa.stage_two.metrics",
    "anc": "neuronxa.stage_two.metrics",
    # language neurons
    "probabilities": "neuronxa.neurons.identify",
    "identify": "neuronxa.neurons.identify",
    "deactivated": "neuronxa.neurons.deactivation",
    "intervene": "neuronxa.neurons.intervention",
    "mean_activations": "neuronxa.neurons.intervention",
    "deactivation_matrix": "neuronxa.neurons.deactivation",
    "read_counts": "neuronxa.neurons.interop",
    "read_mask": "neuronxa.neurons.interop",
    "write_mask": "neuronxa.neurons.interop",
    # alignment over training
    "AlignmentCallback": "neuronxa.training.callbacks",
    "TranslationCallback": "neuronxa.training.callbacks",
    "lora_model": "neuronxa.training.finetune",
    # errors
    "NeuronXAError": "neuronxa.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The public name ``name``, imported from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neuronxa' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
