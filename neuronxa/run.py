"""Command line: ``python -m neuronxa.run [overrides]`` (Hydra; ``-m`` for sweeps).

Composes the config and hands it to its task: ``task=align`` (the default: corpus → stage one → stage two →
correlations, in ``align_task``), ``task=neurons`` (language neurons, in ``neurons_task``) or ``task=training``
(alignment over a LoRA fine-tune, in ``training_task``). Bad input ends
with a one-line error (``debug=true`` for the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from neuronxa.errors import Interrupted, NeuronXAError
from neuronxa.tasks import align as align_task
from neuronxa.tasks import neurons as neurons_task
from neuronxa.tasks import pairwise as pairwise_task
from neuronxa.tasks import training as training_task

TASKS = {"align": align_task.run, "neurons": neurons_task.run, "training": training_task.run,
         "pairwise": pairwise_task.run}


@hydra.main(config_path="pkg://neuronxa.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        TASKS[cfg.task.name](cfg, Path(HydraConfig.get().runtime.output_dir))
    except NeuronXAError as error:
        if cfg.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: what was cached stays, and says so
        if cfg.debug:
            raise
        print(str(interrupt) if isinstance(interrupt, Interrupted) else "interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
