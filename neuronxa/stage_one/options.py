"""Stage one's options in one frozen value: what changes the forward pass's states (and so the cache key), then
how the pass runs (batching, grouping, device placement), which never changes what is cached."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from neuronxa.errors import NeuronXAError, check_whole
from neuronxa.stage_one import models
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.site_paths import Sites

# the probe sites as TransformerLens names them (see ``probes``), recorded in every cache key
SITE_NAMES = {
    "nas": "blocks.{layer}.mlp.hook_act > 0",
    "nav": "|blocks.{layer}.mlp.hook_post|",
    "hidden": "blocks.{layer}.hook_resid_post",
}


def check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise NeuronXAError(f"max_length must be at least 2 tokens, not {max_length}")


@dataclass(frozen=True)
class StageOneOptions:
    """Stage one's options; ``cache_key`` holds the first six (with the model and corpus), never the rest."""

    max_units: int | None = None       # units per language (None: every unit)
    max_length: int = 512              # tokens per unit; longer units are cut
    dtype: str = "auto"
    skip_bos: bool = False             # pool without the BOS token
    layers: int | None = None          # keep the first N decoder layers (None: all)
    sites: Sites | None = None         # FFN probe sites named by hand (None: found from the model's structure)
    batch_size: int = 16               # sentences per batch
    batch_tokens: int | None = None    # padded tokens per batch besides batch_size (None: no budget)
    group_units: int = 256             # units of consecutive languages batched together
    device: str = "auto"
    device_map: str | dict | None = None   # spread a large model over devices (accelerate)
    offload_folder: str | None = None      # with device_map: where offloaded weights go

    def torch_dtype(self) -> str:
        """The dtype the forward pass runs in, as torch names it (``auto`` resolved for the device)."""
        return models.dtype_name(self.dtype, models.resolve_device(self.device))

    def cache_key(self, identity: dict, corpus_name: str) -> dict:
        """Everything that changes the forward pass's pooled states, and nothing else."""
        key = {**identity, "corpus": corpus_name, "max_units": self.max_units, "max_length": self.max_length,
               "dtype": self.torch_dtype(), "skip_bos": self.skip_bos, "sites": SITE_NAMES}
        key = key if self.layers is None else {**key, "layers": self.layers}
        named = None if self.sites is None else {   # without: found by structure, never named; ffn_list: if named
            name: value for name, value in asdict(self.sites).items()
            if name != "without" and (name != "ffn_list" or value is not None)}
        return key if named is None else {**key, "model_sites": named}

    def check(self, spec: ModelSpec, models_dir: str | None = None) -> None:
        """The options against each other and the model's config, before any cache look-up or weights load
        (an architecture without FFN probe sites fails when the model is needed, before its weights load)."""
        check_max_length(self.max_length)
        check_whole(self.batch_size, "batch_size", 1)
        check_whole(self.group_units, "group_units", 1)
        if self.batch_tokens is not None:
            check_whole(self.batch_tokens, "batch_tokens", 1, " (None: batches of batch_size sentences)")
        if self.sites is not None:
            self.sites.check()
        config = models.model_config(spec, models_dir=models_dir)   # read once: a hub model's is a round trip
        if self.layers is not None:
            available = models.n_layers(config)
            if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1 or \
                    (available is not None and self.layers > available):
                raise NeuronXAError(f"layers must be between 1 and the model's {available or 'number of'} layers "
                                    f"(or None for all), not {self.layers!r}")
