"""The benchmarks time and check the train stage's own run, and the GPU check runs its code here
too, so the first GPU it meets is not its first run."""

import ast
import contextlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import gpu as gpu_check
from benchmarks import run as benchmark
from stages import train as train_stage
from tests.conftest import ROOT, encoded_records, git_init, python_env, write_params
from zimdb.data.encoding import Encoding, write_encoding
from zimdb.model.batches import Encoded
from zimdb.paths import ENCODED, ENCODING
from zimdb.training import run as training

# What makes a training run: only zimdb.training.run.assemble may put these together.
RUN_PARTS = {
    "SentimentLSTM",
    "ModelConfig",
    "Stepper",
    "LambdaLR",
    "GradScaler",
    "DistributedDataParallel",
    "DDP",
    "Precision",
    "lr_factor",
    "batch_indices",
}


def called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_the_benchmarks_build_nothing_of_the_run_themselves():
    """No benchmark makes a model, optimizer, schedule, scaler, Stepper or batch order of its
    own, nor sets checkpointing: all of it comes from the stage's assembly. Optimizers are made
    only for the original script's reference loop."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        references = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef) and function.name.startswith("reference")
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                assert called(node) not in RUN_PARTS, f"{path.name}: calls {called(node)}"
                optimizer = ast.unparse(node.func).startswith("torch.optim.")
                assert not optimizer or id(node) in references, f"{path.name}: an optimizer"
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                assert node.attr != "grad_checkpointing", f"{path.name}: sets checkpointing"


def test_no_script_imports_a_stage_script():
    """A stage script is an entry point: what a stage shares with the benchmarks, the service
    or another stage lives in zimdb/."""
    for folder in ("benchmarks", "zimdb", "stages", "docs", "plots"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                assert not any(n.split(".")[0] == "stages" for n in names), path


def signature(run) -> dict:
    """What defines a run's model and step, to compare two runs by."""
    stepper, optimizer = run.stepper, run.stepper.optimizer
    return {
        "config": run.model.config,
        "checkpointing": run.model.grad_checkpointing,
        "precision": (run.precision.name, stepper.scaler.is_enabled()),
        "optimizer": (type(optimizer), {k: v for k, v in optimizer.defaults.items()}),
        "step": (stepper.grad_clip, stepper.position_weight),
        "schedule": [f(s) for f in stepper.schedule.lr_lambdas for s in (0, 10, 100)],
        "weights": [w.detach().clone() for w in run.model.parameters()],
    }


def test_the_benchmarks_run_the_model_and_step_the_stage_runs(tmp_path, monkeypatch):
    vocab = ["<pad>", "<unk>"] + [f"w{i}" for i in range(9998)]
    encoding = Encoding(vocab, 60, "tail")
    records = encoded_records(320, 60, len(vocab), min_len=5)
    (tmp_path / ENCODED).mkdir(parents=True)
    for split in ("train", "val"):
        np.save(tmp_path / ENCODED / f"{split}.npy", records)
    write_encoding(encoding, tmp_path / ENCODING)
    write_params(tmp_path, **{"train.device": "cpu"})  # params.yaml as it is, on the CPU
    git_init(tmp_path)
    built = []

    class Built(Exception):
        pass

    def assembled(*args, **kwargs):
        built.append(training.assemble.__wrapped__(*args, **kwargs))
        raise Built

    assembled.__wrapped__ = training.assemble
    monkeypatch.setattr(training, "assemble", assembled)
    with contextlib.chdir(tmp_path), pytest.raises(Built):
        train_stage.main()
    (stage,) = built
    train = Encoded.from_records(records, torch.device("cpu"))
    runs = {
        "benchmarks.run": benchmark.stage_run(benchmark.train_params(), train, encoding, "auto"),
        "benchmarks.gpu": gpu_check.assemble(
            gpu_check.train_params(), train, encoding, stage.precision
        ),
    }
    expected = signature(stage)
    for name, run in runs.items():
        got = signature(run)
        for key in expected:
            if key == "weights":
                assert all(map(torch.equal, got[key], expected[key])), name
            else:
                assert got[key] == expected[key], (name, key)


def test_gpu_check_runs_on_a_cpu_and_its_checks_pass(tmp_path):
    # Through the script the GPU machine runs, on this environment's python.
    cmd = ["bash", "benchmarks/gpu.sh", "--device", "cpu", "--small"]
    cmd += ["--reviews", "256", "--encoded", str(tmp_path)]  # no data there: random reviews
    env = python_env() | {"PYTHON": sys.executable}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "random reviews of IMDB-like lengths" in out and "FAILED" not in out
    # bf16's dtype, the scaler's skip, accumulation in fp32 and half, two processes
    assert out.count("-> ok") == 5, out
    assert "fp32: epoch of 256" in out and "bf16: epoch of 256" in out
    assert "checkpointing on :" in out and "checkpointing off:" in out
    assert "no check(s) failed" in out


def test_the_gpu_check_s_random_reviews_are_like_the_encode_stage_s(tmp_path):
    encoding = Encoding(["<pad>", "<unk>", "a", "b"], 30, "tail")
    records = gpu_check.random_reviews(500, encoding, 0)
    lengths = records["length"]
    assert lengths.min() >= 5 and lengths.max() <= 30
    real = np.arange(30) < lengths[:, None]
    assert (records["ids"][real] >= 2).all() and (records["ids"][~real] == 0).all()
