"""Models: what to load (``spec``: config names composed through Hydra, hub ids, folders), what identifies the
weights (``identity``), embedded GGUF models converted once (``gguf``) and loading (``loading``).

``python -m neuronxa.stage_one.models NAME...`` converts embedded models ahead of time into the configured
``paths.models`` folder.
"""

from neuronxa.stage_one.models.gguf import converted_folder, save_model
from neuronxa.stage_one.models.identity import adapter_base, identity, local_path, model_config, n_layers
from neuronxa.stage_one.models.loading import dtype_name, load, meta_model, resolve_device, resolve_dtype
from neuronxa.stage_one.models.spec import (
    ModelSpec,
    composed,
    model_conf,
    model_spec,
    named_config,
    spec_from_config,
    training_step,
)

__all__ = ["ModelSpec", "adapter_base", "composed", "converted_folder", "dtype_name", "identity", "load", "local_path",
           "meta_model", "model_conf", "model_config", "model_spec", "n_layers", "named_config", "resolve_device",
           "resolve_dtype", "save_model", "spec_from_config", "training_step"]
