#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU. In the project's environment:
# `uv run bash benchmarks/gpu.sh`. On a machine that has Python 3.12 and torch but not uv.lock's
# environment, `bash benchmarks/gpu.sh` runs on its own python3 and packages (numpy, pandas,
# pyarrow, PyYAML, scikit-learn, tqdm), plus the wheels of benchmarks/gpu-wheels.txt, downloaded
# into .whl/ as that file says. Arguments go to benchmarks/gpu.py, e.g. --quick.
# Rehearse it on a CPU in such an environment with PYTHON=/path/to/python ... --device cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
# Only where pydantic is missing (the wheels are built for CPython 3.12 on x86-64 Linux), and
# unpacked, not installed: a wheel is a zip archive, and a venv may have no pip.
if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  shopt -s nullglob
  for wheel in .whl/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$site"; done
fi
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
"$PYTHON" -m benchmarks.gpu "$@"
