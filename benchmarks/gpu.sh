#!/usr/bin/env bash
# The GPU check on a machine that has Python 3.12 and torch but none of uv.lock: its own python3
# and packages (numpy, pandas, pyarrow, PyYAML, tqdm), plus the wheels of benchmarks/gpu-wheels.txt
# carried in .whl/ (the device tool's `carry`). Arguments go to benchmarks/gpu.py, e.g. --quick.
# Rehearse it on a CPU in such an environment with PYTHON=/path/to/python ... --device cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=$(mktemp -d)
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.gpu "$@"
