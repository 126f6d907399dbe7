"""The GPU check runs its code here too, so the first GPU it meets is not its first run."""

import subprocess
import sys

from tests.conftest import ROOT, python_env


def test_gpu_check_runs_on_a_cpu_and_its_checks_pass(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--reviews", "256"]
    cmd += ["--encoded", str(tmp_path)]  # no data there: random reviews of IMDB's lengths
    result = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "random reviews of IMDB-like lengths" in out
    assert out.count("-> ok") == 3 and "FAILED" not in out  # scaler skip, accumulation x 2
    assert "fp32:" in out and "bf16:" in out  # an epoch in each
