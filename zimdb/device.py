"""Choosing the torch device from params, and the precision to compute in on it."""

from contextlib import AbstractContextManager, nullcontext

import torch

from zimdb.errors import PipelineError


def resolve(name: str, where: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without a GPU is a user error naming `where` (a
    params key or a command-line option)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{where} is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def uses_amp(device: torch.device, amp: bool) -> bool:
    """fp16 autocast trades precision for GPU speed; on a CPU it would only slow things down."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """The one precision context of a run: fp16 autocast where uses_amp, else none.

    Without autocast's weight-cast cache: a checkpointed chunk recomputed in backward would find
    the cached casts of its forward gone and fail checkpoint's check that it saved the same
    tensors (a known PyTorch pitfall). Each LSTM call casts its weights once anyway.
    """
    if not uses_amp(device, amp):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.float16, cache_enabled=False)


# Dense peak FLOP/s of common GPUs (vendor datasheets, SXM/boards without sparsity): fp16 tensor
# cores under autocast, fp32 (no TF32) otherwise. The first key found in the device name wins, so
# longer names come before their prefixes (A100 before A10, L40 before L4).
GPU_PEAK = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L40": (181e12, 90.5e12),
    "L4": (121e12, 30.3e12),
    "A10": (125e12, 31.2e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}
# fp32 matmul rate of a 2-core x86 host like the project's CI machine, measured by
# `uv run python -m benchmarks.run` (its matmul line): a CPU has no datasheet peak to quote.
CPU_PEAK = 168e9


def peak_flops(device: torch.device, amp: bool, processes_here: int = 1) -> float | None:
    """One process's peak FLOP/s, what its utilisation is reported against; None for a GPU not
    in the table. A GPU is one process's own; the CPU is shared by the processes on it."""
    if device.type != "cuda":
        return CPU_PEAK / processes_here
    name = torch.cuda.get_device_name(device)
    for model, (fp16, fp32) in GPU_PEAK.items():
        if model in name:
            return fp16 if uses_amp(device, amp) else fp32
    return None
