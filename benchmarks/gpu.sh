#!/usr/bin/env bash
# The GPU check on a machine that has Python 3.12 and torch but none of uv.lock: its own python3
# and packages (numpy, pandas, pyarrow, PyYAML, scikit-learn, tqdm), plus the wheels of benchmarks/gpu-wheels.txt
# carried in .whl/ (the device tool's `carry`). Arguments go to benchmarks/gpu.py, e.g. --quick.
# Rehearse it on a CPU in such an environment with PYTHON=/path/to/python ... --device cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
# A wheel is a zip archive to unpack onto the path: no pip needed (a venv may have none).
shopt -s nullglob  # no .whl/ (an environment that has pydantic): nothing to unpack
for wheel in .whl/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$site"; done
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
"$PYTHON" -m benchmarks.gpu "$@"
