"""Mixed precision on every machine: the AMP loop's own calls (bf16 autocast, an enabled
GradScaler) run here on the CPU as they run with fp16 on CUDA; the precision each setting means
on each kind of device; scoring in the trained precision; denormals flushed; the peak measured.

bf16 runs whether or not the CPU has it: where oneDNN has no bf16 LSTM, aten's is used, which
at these sizes costs little.
"""

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import zimdb.model.lstm
from stages import train as train_stage
from tests.conftest import ROOT, encoded_records, model_config, write_params
from tests.test_training_runs import TINY, train_here, workdir
from zimdb.data.encoding import Encoding
from zimdb.errors import PipelineError
from zimdb.model import device as device_module
from zimdb.model import precision as precision_module
from zimdb.model.batches import Encoded
from zimdb.model.file import ModelFile
from zimdb.model.lstm import Logits, SentimentLSTM
from zimdb.model.precision import Precision, for_scoring, for_training
from zimdb.scoring.lstm import LSTMScorer
from zimdb.training.step import Stepper

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
KEY = "params.yaml: train.precision"
BF16 = Precision("bf16", "cpu", "test")
SCALE = 2.0**16  # GradScaler's own initial scale


def window() -> list[tuple[torch.Tensor, ...]]:
    """Three micro-batches of reviews up to 60 tokens: checkpointing cuts them in chunks of 25."""
    data = Encoded.from_records(encoded_records(48, 60, 50, min_len=5), CPU)
    return data.batches([np.arange(0, 16), np.arange(16, 32), np.arange(32, 48)])


def make_stepper(
    scaler: torch.amp.GradScaler,
    autocast,
    grad_clip=0.0,
    checkpointing=False,
    pooling="last",
    position_weight=0.0,
):
    torch.manual_seed(0)
    shape = dict(embedding_dim=16, hidden_dim=32, dropout=0.0, word_dropout=0.0, pooling=pooling)
    model = SentimentLSTM(model_config(50, **shape)).train()
    model.grad_checkpointing = checkpointing
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Stepper(model, optimizer, schedule, scaler, autocast, grad_clip, position_weight)


def scaled_bf16(**kw) -> Stepper:
    """The CUDA path's calls on the CPU: autocast, and a GradScaler that scales."""
    return make_stepper(torch.amp.GradScaler("cpu", init_scale=SCALE), BF16.autocast(), **kw)


def fp32(**kw) -> Stepper:
    return make_stepper(torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext(), **kw)


def gradients(stepper: Stepper, scale: float = 1.0) -> torch.Tensor:
    return torch.cat([p.grad.flatten() / scale for p in stepper.model.parameters()])


def weights(stepper: Stepper) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in stepper.model.parameters()])


# The last state alone; and it with the max and mean of the states so far, trained at every
# position. bf16's rounding moves the running max of 1.7% of the states to another time step,
# which sends that gradient down another path of the LSTM: its gradient is 4.5% off fp32's in
# norm (measured), the last state's 0.6-1.0%.
@pytest.mark.parametrize(
    ("head", "tolerance", "cosine"),
    [
        (dict(), 0.03, 0.999),
        (dict(position_weight=1.0), 0.03, 0.999),
        (dict(pooling="concat", position_weight=1.0), 0.08, 0.998),
    ],
)
def test_bf16_window_gradients_match_fp32(head, tolerance, cosine):
    reference = fp32(**head)
    reference.backward(window())
    amp = scaled_bf16(**head)
    amp.backward(window())
    expected, got = gradients(reference), gradients(amp, SCALE)
    # bf16 keeps 8 significant bits (a rounding of 0.4% at most per value); over 60 steps of an
    # LSTM the window's gradient stays within a few % of fp32's in norm.
    error = torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected)
    assert error < tolerance
    assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > cosine


def test_an_inf_gradient_skips_the_step_and_lowers_the_scale():
    stepper = scaled_bf16(grad_clip=1.0)
    before = weights(stepper)
    stepper.model.head.weight.register_hook(lambda grad: grad * float("inf"))
    stepper.step(window())
    assert torch.equal(weights(stepper), before)  # Adam or SGD never saw the step
    assert stepper.scaler.get_scale() == SCALE * 0.5  # GradScaler's backoff
    # The next window, finite, is stepped at the lowered scale.
    stepper.model.head.weight._backward_hooks.clear()
    stepper.step(window())
    assert not torch.equal(weights(stepper), before)


def test_a_nan_loss_skips_the_step_too(monkeypatch):
    stepper = scaled_bf16()
    before = weights(stepper)
    forward = SentimentLSTM.forward
    monkeypatch.setattr(
        SentimentLSTM, "forward", lambda *a: Logits(*(o * float("nan") for o in forward(*a)))
    )
    loss, _ = stepper.step(window())
    assert torch.isnan(loss) and torch.equal(weights(stepper), before)
    assert stepper.scaler.get_scale() == SCALE * 0.5


def test_clipping_sees_the_unscaled_gradients(monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recorded(parameters, max_norm):
        parameters = list(parameters)
        norms.append(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in parameters])))
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    unscaled = make_stepper(torch.amp.GradScaler("cpu", enabled=False), BF16.autocast(), 1e-3)
    unscaled.step(window())
    scaled = scaled_bf16(grad_clip=1e-3)
    scaled.step(window())
    # The same bf16 gradients, once scaled by 2^16: clipping saw them divided back.
    assert norms[1] == pytest.approx(norms[0].item(), rel=1e-6)
    # And the clipped step moved the weights by the same amount either way.
    moved = [torch.linalg.vector_norm(weights(s) - weights(fp32())) for s in (unscaled, scaled)]
    assert moved[1] == pytest.approx(moved[0].item(), rel=1e-5) and moved[0] <= 0.1 * 1e-3 * 1.01


def test_checkpointing_under_autocast_recomputes_exactly(monkeypatch):
    plain = scaled_bf16()
    plain.backward(window())
    checkpointed = scaled_bf16(checkpointing=True)
    checkpointed.backward(window())
    monkeypatch.setattr(zimdb.model.lstm, "checkpoint", lambda fn, *args, use_reentrant: fn(*args))
    chunked = scaled_bf16(checkpointing=True)  # the same chunks of 25 steps, nothing recomputed
    chunked.backward(window())
    # The recomputation in backward repeats its forward bit for bit (autocast state and dropout's
    # generator restored) ...
    assert torch.equal(gradients(checkpointed), gradients(chunked))
    # ... and cutting the review in chunks rounds the (h, c) carried between them to bf16, a
    # small difference from one call over all steps (0.2% measured).
    got, expected = gradients(checkpointed), gradients(plain)
    assert torch.linalg.vector_norm(got - expected) < 0.01 * torch.linalg.vector_norm(expected)


def test_bf16_without_onednn_support_runs_aten_lstm_in_bf16():
    """As on a CPU without AVX-512: oneDNN capped at AVX2 refuses a bf16 LSTM, and the model
    falls back to aten's, in bf16 still."""
    code = (
        "import torch; from tests.test_precision import *; "
        "assert precision_module.native_bf16(CPU) is None; "
        "s = scaled_bf16(checkpointing=True); "
        "outs = []; "
        "s.model.lstm.register_forward_hook(lambda m, a, out: outs.append(out[0].dtype)); "
        "s.backward(window()); "
        "g = gradients(s, SCALE); "
        "r = fp32(); r.backward(window()); e = gradients(r); "
        "assert outs[0] == torch.bfloat16, outs; "
        "assert torch.linalg.vector_norm(g - e) < 0.03 * torch.linalg.vector_norm(e)"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def fake_cpu(monkeypatch, **capabilities) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)


@pytest.mark.parametrize(
    "capabilities, name, why",
    [
        ({"amx_bf16": True, "avx512_bf16": True}, "bf16", "this CPU has AMX-BF16"),
        ({"avx512_bf16": True}, "bf16", "this CPU has AVX512-BF16"),
        ({"avx2": True}, "fp32", "this CPU has no AMX-BF16 or AVX512-BF16"),
    ],
)
def test_auto_on_a_cpu_follows_its_bf16_hardware(monkeypatch, capabilities, name, why):
    fake_cpu(monkeypatch, **capabilities)
    chosen = for_training("auto", CPU, KEY)
    assert (chosen.name, chosen.why, chosen.warning) == (name, f"{KEY} auto: {why}", None)
    assert chosen.grad_scaler().is_enabled() is False  # bf16 and fp32 need no loss scaling


def test_auto_on_cuda_is_fp16_with_a_scaler():
    chosen = for_training("auto", CUDA, KEY)
    assert (chosen.name, chosen.device_type) == ("fp16", "cuda") and "GradScaler" in chosen.why


def test_fp16_on_a_cpu_is_refused_naming_the_key():
    with pytest.raises(PipelineError, match=rf"^{KEY} is 'fp16', which trains on CUDA GPUs only"):
        for_training("fp16", CPU, KEY)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(PipelineError, match=rf"^{KEY} is 'bf16' but Tesla T4 has no bf16"):
        for_training("bf16", CUDA, KEY)


def test_bf16_on_a_cpu_without_it_is_allowed_with_a_warning(monkeypatch):
    fake_cpu(monkeypatch, avx2=True)
    chosen = for_training("bf16", CPU, KEY)
    assert chosen.name == "bf16" and "emulated, many times slower" in chosen.warning
    fake_cpu(monkeypatch, avx512_bf16=True)
    assert for_training("bf16", CPU, KEY).warning is None


@pytest.mark.parametrize(
    "trained, capabilities, scored",
    [
        ("bf16", {"avx512_bf16": True}, "bf16"),
        ("bf16", {"avx2": True}, "fp32"),
        ("fp16", {"amx_bf16": True}, "fp32"),  # trained on a GPU, scored on a CPU
        ("fp32", {"amx_bf16": True}, "fp32"),
    ],
)
def test_scoring_uses_the_trained_precision_where_native(
    monkeypatch, capsys, trained, capabilities, scored
):
    fake_cpu(monkeypatch, **capabilities)
    assert for_scoring(trained, CPU).name == scored
    err = capsys.readouterr().err
    assert (f"trained in {trained}, which this CPU does not run natively" in err) == (
        scored != trained
    )


def test_a_loaded_model_scores_in_its_precision_and_flushes_denormals(tmp_path, monkeypatch):
    # Native or not, bf16 runs: aten's LSTM where oneDNN has none.
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: "AVX512-BF16")
    vocab = ["<pad>", "<unk>", "good", "bad"]
    model = SentimentLSTM(model_config(len(vocab), embedding_dim=4, hidden_dim=4)).eval()
    ModelFile(model, Encoding(vocab, 5, "tail"), "bf16").save(tmp_path / "m.pt")
    torch.set_flush_denormal(False)
    trained = LSTMScorer.load(tmp_path / "m.pt")
    assert trained.scoring.name == "bf16"
    assert torch.tensor([1e-39]).mul(1.0).item() == 0.0  # below fp32's normal range: flushed
    outputs = []
    trained.file.model.head.register_forward_hook(lambda m, a, out: outputs.append(out.dtype))
    trained.probabilities(pd.Series(["good good", "bad"]))
    assert set(outputs) == {torch.bfloat16}


def test_the_train_log_starts_with_the_precision_and_why(tmp_path):
    root = workdir(tmp_path, "log", **{"train.epochs": 1, "train.precision": "auto"})
    torch.set_flush_denormal(False)
    first = train_here(root).splitlines()[0]
    chosen = for_training("auto", CPU, KEY)
    assert first.startswith(f"precision {chosen.name} ({chosen.why}); device cpu x 1")
    assert torch.tensor([1e-39]).mul(1.0).item() == 0.0  # the stage flushed denormals
    # Utilisation against a matmul measured now and after each epoch, in the run's precision.
    assert "GFLOP/s (a square matmul, measured now and after each epoch)" in first
    # Whether checkpointing is on, and why: auto's estimate against the free memory.
    assert re.search(r"gradient checkpointing off \(auto: a batch's activations [\d,]+ MiB", first)
    assert ModelFile.load(root / "data/model.pt").precision == chosen.name


def test_a_precision_the_device_cannot_train_in_fails_before_any_work(tmp_path):
    root = tmp_path / "empty"  # no data at all: the precision is refused first
    root.mkdir()
    write_params(root, **(TINY | {"train.precision": "fp16"}))
    with contextlib.chdir(root), pytest.raises(PipelineError, match=r"train.precision is 'fp16'"):
        train_stage.main()
    assert not (root / "data").exists()


def test_emulated_bf16_warns_once_on_stderr(tmp_path, monkeypatch):
    root = workdir(tmp_path, "slow", **{"train.epochs": 1, "train.precision": "bf16"})
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: None)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = train_here(root)
    assert err.getvalue().count("bf16 is emulated, many times slower than fp32") == 1
    assert out.splitlines()[0].startswith(f"precision bf16 ({KEY} bf16)")
    # No peak is read for it (an emulated matmul: seconds a reading), nor quoted.
    assert "peak" not in out


def test_cpu_peak_is_measured_in_the_run_precision_and_gpus_come_from_the_table(monkeypatch):
    assert device_module.peak_flops(CPU, torch.float32) > 1e9
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert device_module.peak_flops(CUDA, torch.float16) == 362e12
    assert device_module.peak_flops(CUDA, torch.float32) == 183e12  # TF32, cuDNN's default
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert device_module.peak_flops(CUDA, torch.float32) == 91.6e12
    # The H100 PCIe is no H100 SXM: the longer name is looked up first.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert device_module.peak_flops(CUDA, torch.float16) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some New GPU")
    assert device_module.peak_flops(CUDA, torch.bfloat16) is None
