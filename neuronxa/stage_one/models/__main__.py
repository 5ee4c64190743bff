"""``python -m neuronxa.stage_one.models NAME...``: convert embedded models ahead of time, into the configured
``paths.models`` folder (``NEURONXA_OUTPUTS`` moves it, as it moves every output)."""

import logging
import sys
from pathlib import Path

from neuronxa.stage_one.models import composed, converted_folder, model_spec


def main(names: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models_dir = Path(composed().paths.models)
    for name in names:
        print(f"{name}: {converted_folder(model_spec(name), models_dir)}")


if __name__ == "__main__":
    main(sys.argv[1:])
