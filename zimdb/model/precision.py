"""The precision a run computes in, chosen once for its device: fp32, or autocast to bf16 or fp16.

`train.precision: auto` takes fp16 autocast with GradScaler on a CUDA GPU (the original), bf16
autocast on a CPU with native bf16 (AMX-BF16 or AVX512-BF16, by torch's own checks), and fp32
on any other CPU. Scoring (evaluate, predict, serve) runs in the precision the model was trained
in where the device runs it natively, and in fp32 otherwise.
"""

import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from zimdb.errors import PipelineError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Each measured faster than fp32 on the project's machines: on an Intel Xeon with AMX-BF16 a
# default epoch took 32 s against 62, on an AMD EPYC with AVX512-BF16 (no AMX) 1.6-1.7x fewer
# seconds per training step (docs/history/benchmarks.md, runs 8-11).
CPU_BF16 = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    device_type: str  # cpu or cuda
    why: str  # for the log: the setting, and what decided it
    warning: str | None = None  # something the user should hear once, on stderr
    scaled: bool = False  # loss scaling: fp16's small gradients underflow (below 6e-8)
    emulated: bool = False  # bf16 on a CPU without it: correct, slow, and no peak to quote

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> AbstractContextManager:
        """The run's one precision context: autocast to bf16 or fp16, or none for fp32.

        Without autocast's weight-cast cache: a checkpointed chunk recomputed in backward would
        find the cached casts of its forward gone and fail checkpoint's check that it saved the
        same tensors (a known PyTorch pitfall). Each LSTM call casts its weights once anyway.
        """
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Enabled where the gradients pass through fp16: bf16 has fp32's exponent range."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def native_bf16(device: torch.device) -> str | None:
    """What gives `device` bf16 in hardware (named for the log), or None where it has none."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.cuda.get_device_name(device)
        return None
    capabilities = torch.cpu.get_capabilities()
    found = next((name for key, name in CPU_BF16.items() if capabilities.get(key)), None)
    # oneDNN runs the LSTM and has its own say: capped by ONEDNN_MAX_CPU_ISA, it has no bf16 LSTM
    # even on such a CPU.
    return found if found and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def for_training(setting: str, device: torch.device, key: str) -> Precision:
    """The precision `setting` (auto, fp32, bf16, fp16) means on `device`; one that the device
    cannot train in is a PipelineError naming `key`, raised before any work."""
    cuda = device.type == "cuda"
    if setting == "auto":
        if cuda:
            why = f"{key} auto on a CUDA GPU: fp16 autocast, GradScaler"
            return Precision("fp16", "cuda", why, scaled=True)
        feature = native_bf16(device)
        if feature:
            return Precision("bf16", "cpu", f"{key} auto: this CPU has {feature}")
        return Precision("fp32", "cpu", f"{key} auto: this CPU has no AMX-BF16 or AVX512-BF16")
    if setting == "fp16" and not cuda:
        raise PipelineError(
            f"{key} is 'fp16', which trains on CUDA GPUs only (oneDNN's LSTM has no fp16 on a "
            "CPU); use 'auto', 'bf16' or 'fp32'"
        )
    emulated = setting == "bf16" and not native_bf16(device)
    warning = None
    if emulated:
        if cuda:
            raise PipelineError(
                f"{key} is 'bf16' but {torch.cuda.get_device_name(device)} has no bf16 (it "
                "needs compute capability 8.0 or newer); use 'auto', 'fp16' or 'fp32'"
            )
        warning = (
            f"warning: {key} is 'bf16' but this CPU has no AMX-BF16 or AVX512-BF16: bf16 is "
            "emulated, many times slower than fp32"
        )
    return Precision(setting, device.type, f"{key} {setting}", warning, setting == "fp16", emulated)


def for_scoring(trained: str, device: torch.device) -> Precision:
    """The model's own precision where `device` runs it natively, else fp32 (said on stderr)."""
    native = trained == "fp32" or (
        native_bf16(device) if trained == "bf16" else device.type == "cuda"
    )
    if native:
        return Precision(trained, device.type, f"trained in {trained}")
    print(
        f"note: the model was trained in {trained}, which this {device.type.upper()} does not run "
        "natively; scoring in fp32",
        file=sys.stderr,
    )
    return Precision("fp32", device.type, f"trained in {trained}, scored in fp32")
