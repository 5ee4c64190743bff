"""Command line: ``python -m neuronxa.run [overrides]`` or ``neuronxa [overrides]`` (Hydra; ``-m`` for sweeps).

Every job of the run is composed and validated first (``neuronxa.config``): a mistake ends with one line
``error: <option>=<value>: <what is wrong>; <what to do>`` and exit code 2, before any model loads. Then Hydra
runs each job's task, looked up by ``task.name`` in ``neuronxa.config.schema.TASKS`` and imported only then:
``align`` (corpus → stage one → stage two → correlations), ``pairwise`` (every ordered pair of languages),
``neurons`` (language neurons) or ``training`` (alignment over a LoRA fine-tune). Errors a job raises end the
same way (``debug=true`` for the traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from neuronxa.config.help import app_help
from neuronxa.config.jobs import CONFIG_MODULE, CONFIG_NAME, check_command_line, known_mode
from neuronxa.config.schema import TASKS, register
from neuronxa.errors import Interrupted, NeuronXAError


def task_function(name: str) -> Callable[[DictConfig, Path], None]:
    """The task's ``run(cfg, folder)``, imported now that it is chosen."""
    module, _, function = TASKS[name].partition(":")
    return getattr(import_module(module), function)


@hydra.main(config_path="pkg://neuronxa.conf", config_name="config", version_base="1.3")
def run_job(cfg: DictConfig) -> None:
    """One job of the run (Hydra calls it once per sweep point)."""
    try:
        task_function(cfg.task.name)(cfg, Path(HydraConfig.get().runtime.output_dir))
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


def main() -> None:
    """Validate every job of the command line, then hand the run to Hydra."""
    register()
    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    try:
        if args.help:   # Hydra's help, composed once (Hydra's own takes seconds listing the groups)
            print(app_help(args, CONFIG_MODULE, args.config_name or CONFIG_NAME, job=Path(__file__).stem))
            return
        checked = check_command_line(sys.argv[1:])
    except NeuronXAError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    with known_mode(checked):
        run_job()


if __name__ == "__main__":
    main()
