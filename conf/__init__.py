"""The Hydra configs, installed with the package: compose them from Python with
``hydra.initialize_config_module("neuronxa.conf")`` and ``hydra.compose("config", overrides=[...])``.
Importing this module registers the groups' schemas, which the YAML files name in their defaults lists."""

from neuronxa.config.schema import register

register()
