"""Command line: ``python -m neuronxa.run [overrides]`` (Hydra; ``-m`` for sweeps).

Composes the config and calls the stages; bad input ends with a one-line error (``debug=true`` for the
traceback).
"""

from __future__ import annotations

import sys

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from neuronxa.corpus import read_corpus
from neuronxa.errors import NeuronXAError
from neuronxa.extract import extract_corpus
from neuronxa.models import spec_from_config

_READER_OPTIONS = {"udhr": ("unit",), "flores": ("split",)}


def load_corpus(dataset: DictConfig):
    """The configured corpus, with its languages and unit limit applied."""
    options = {name: dataset[name] for name in _READER_OPTIONS.get(dataset.name, ())}
    languages = list(dataset.languages) if dataset.get("languages") else None
    return read_corpus(dataset.name, dataset.path, languages, dataset.get("max_units"), **options)


def stage_one(cfg: DictConfig):
    """Cache pooled states for the configured model and corpus; print what was written or reused."""
    corpus = load_corpus(cfg.dataset)
    store, report = extract_corpus(
        corpus, spec_from_config(cfg.model), cfg.cache.dir,
        max_units=cfg.dataset.get("max_units"), max_length=cfg.extract.max_length,
        batch_size=cfg.extract.batch_size, dtype=cfg.model.dtype, device=cfg.model.device,
        device_map=cfg.model.get("device_map"), skip_bos=cfg.pooling.skip_bos,
    )
    with pd.option_context("display.width", 120, "display.max_rows", 500):
        print(report.to_string(index=False))
    counts = report.status.value_counts().to_dict()
    print(f"stage one: {', '.join(f'{n} {s}' for s, n in counts.items())}; truncated units: "
          f"{int(report.truncated.sum())}; cache: {store.path}")
    return corpus, store, report


def run(cfg: DictConfig) -> None:
    stage_one(cfg)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except NeuronXAError as error:
        if cfg.get("debug") or OmegaConf.select(cfg, "debug", default=False):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
