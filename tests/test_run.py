"""The training run as zimdb.training.run puts it together, on the points where a GPU's first run
would otherwise crash or crawl: every count reduced on the run's device in one tensor, fused
Adam, checkpointing decided by memory, and bf16 that cuDNN's autocast runs in fp16."""

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, encoded_records
from zimdb import params
from zimdb.data.encoding import Encoding
from zimdb.model.batches import Encoded
from zimdb.model.precision import for_training
from zimdb.training import distributed
from zimdb.training import run as run_module

CPU = torch.device("cpu")
SMALL = {"embedding_dim": 8, "hidden_dim": 16, "epochs": 1, "batch_size": 16}


def small_run(precision: str = "fp32", **overrides):
    p = params.load("train", ROOT / "params.yaml").model_copy(update=SMALL | overrides)
    encoding = Encoding(["<pad>", "<unk>"] + [f"w{i}" for i in range(98)], 24, "tail")
    train = Encoded.from_records(encoded_records(96, 24, 100, min_len=3), CPU)
    val = Encoded.from_records(encoded_records(32, 24, 100, min_len=3, seed=1), CPU)
    chosen = for_training(precision, CPU, "precision")
    return run_module.assemble(p, train, encoding, chosen), train, val


def test_an_epoch_reduces_every_count_in_one_tensor_on_the_run_s_device(monkeypatch):
    """NCCL reduces device tensors only; host counts stacked with device sums crashed DDP on CUDA
    at the end of the first epoch."""
    reduced = []

    def all_sum(group, values):
        reduced.append(values)
        return values

    monkeypatch.setattr(distributed, "all_sum", all_sum)
    run, train, val = small_run()
    metrics = run_module.epoch(run, train, val, np.random.default_rng(0), 1)
    (values,) = reduced
    assert isinstance(values, torch.Tensor) and values.device == run.device
    assert values.shape == (6,)  # loss, correct, samples, tokens; val loss, val correct
    assert round(metrics["samples_per_s"] * metrics["epoch_time_s"]) == len(train)


def test_adam_is_fused():
    """One kernel for every parameter, and on CUDA GradScaler's state read on the device: no
    wait for the GPU at each optimizer step."""
    run, _, _ = small_run()
    assert type(run.stepper.optimizer) is torch.optim.Adam
    assert run.stepper.optimizer.defaults["fused"] is True


@pytest.mark.parametrize(("free", "on"), [(10 * 2**30, False), (2**20, True)])
def test_auto_checkpointing_turns_on_only_where_memory_runs_short(monkeypatch, free, on):
    monkeypatch.setattr(run_module, "free_memory", lambda device: free)
    run, _, _ = small_run(grad_checkpointing="auto")
    assert run.model.grad_checkpointing is on
    assert run.checkpointing.startswith("auto: a batch's activations")


@pytest.mark.parametrize("setting", [True, False])
def test_checkpointing_set_true_or_false_is_honoured(monkeypatch, setting):
    monkeypatch.setattr(run_module, "free_memory", lambda device: 2**20 if setting else 2**40)
    run, _, _ = small_run(grad_checkpointing=not setting)
    assert run.model.grad_checkpointing is (not setting)
    assert run.checkpointing == f"train.grad_checkpointing {str(not setting).lower()}"


def test_the_activation_estimate_is_what_autograd_saves_for_a_full_batch():
    """At params.yaml's model size: at a tiny one oneDNN's padded workspace is most of it."""
    p = params.load("train", ROOT / "params.yaml")
    run, _, _ = small_run(embedding_dim=p.embedding_dim, hidden_dim=p.hidden_dim)
    model, precision = run.model, run.precision
    estimate = run_module.activation_bytes(model, 16, 64, precision)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    ids = torch.ones(16, 64, dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, torch.full((16,), 64))
    assert abs(estimate - total) / total < 0.05, (estimate, total)


def test_bf16_that_runs_the_lstm_in_fp16_turns_the_scaler_on_and_says_so(monkeypatch):
    """torch's cuDNN autocast wrapper casts the LSTM to fp16 whatever the autocast dtype: bf16
    would then train in fp16 with no loss scaling."""
    run, _, _ = small_run("bf16")
    model = run.model
    assert not run.precision.scaled  # this CPU's bf16 is bf16
    monkeypatch.setattr(model, "states", lambda ids: torch.zeros(1, dtype=torch.float16))
    scaled = run_module.scale_if_half(model, run.precision)
    assert scaled.scaled and scaled.grad_scaler().is_enabled()
    assert "bf16 autocast runs the LSTM in fp16" in scaled.warning
    fp32 = for_training("fp32", CPU, "precision")
    assert run_module.scale_if_half(model, fp32) is fp32
