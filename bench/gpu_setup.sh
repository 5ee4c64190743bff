#!/usr/bin/env bash
# Run the GPU bench on a bare machine that has its own torch and transformers but no package registry.
#
# Where a registry is reachable, bring the wheels along first (pure-Python ones suffice beside the machine's torch):
#   pip download --only-binary=:all: --no-deps -d bench/wheels zarr numcodecs donfig crc32c hydra-core omegaconf \
#       antlr4-python3-runtime filelock fsspec tqdm gguf peft sacrebleu portalocker tabulate
# then copy the repository (with bench/wheels and data/udhr) to the GPU machine and run:
#   bash bench/gpu_setup.sh --shape llama2_7b        # any bench/gpu.py options
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch, transformers" || { echo "error: the GPU machine needs torch and transformers"; exit 2; }
missing=()
for module in zarr numcodecs hydra omegaconf filelock fsspec tqdm pandas scipy gguf; do
    "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from bench/wheels: ${missing[*]}"
    "$PYTHON" -m pip install --no-index --find-links bench/wheels --no-deps bench/wheels/*.whl
fi
"$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . >/dev/null
[ -f data/udhr/package/declaration/eng.html ] || { echo "error: bring data/udhr (make install fetches it)"; exit 2; }
exec "$PYTHON" -m bench.gpu "$@"
