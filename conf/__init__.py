"""The Hydra configs, installed with the package: compose them from Python with
``hydra.initialize_config_module("neuronxa.conf")`` and ``hydra.compose("config", overrides=[...])``."""
