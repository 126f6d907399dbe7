"""The torch device: chosen from params, prepared for work, its free memory, and the peak FLOP/s
a run's utilisation is read against."""

import ctypes
import platform
import time

import psutil
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


# Linux's glibc serves every allocation over 32 MiB (an LSTM's activations for a batch, 65 MiB
# of gates at the defaults) with a fresh mmap and gives it back on free, so every training step
# faults its activations in again: 130,000 minor faults a second, a quarter of the step time on a
# 2-core AMD EPYC (Zen 3, fp32). Kept on the heap instead, and the heap kept, they are reused.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters, from glibc's malloc.h
TRIM_THRESHOLD = 1 << 30  # bytes free at the heap's top before it is given back to the system


def prepare(device: torch.device) -> None:
    """On a CPU: numbers below fp32's normal range (1e-38) become 0, and large tensors come from
    a heap that is kept rather than a fresh mmap each.

    An LSTM whose gradients fade, as they do with the forget gates' bias at PyTorch's 0,
    otherwise spends its backward on denormals: 3,077 against 228 ms a step on an Intel Xeon
    (docs/history/benchmarks.md). Threads started afterwards, as torch's own are, inherit the
    setting."""
    if device.type != "cpu":
        return
    torch.set_flush_denormal(True)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def free_memory(device: torch.device) -> int:
    """Bytes the device has free now: a GPU's, or the memory the system has available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


# Dense peak FLOP/s of common GPUs (vendor datasheets, without sparsity): fp16/bf16 tensor cores
# under autocast; fp32 as cuDNN's RNNs compute it, in TF32 (torch's default), or plain fp32 where
# TF32 is turned off. The first key found in the device name wins, so longer names come before
# their prefixes (H100 PCIe before H100, A100 before A10, L40 before L4).
GPU_PEAK = {  # half, TF32, fp32
    "H100 PCIe": (756e12, 378e12, 51e12),
    "H100 NVL": (835e12, 418e12, 60e12),
    "H200 NVL": (835e12, 418e12, 60e12),
    "H200": (989e12, 495e12, 67e12),
    "H100": (989e12, 495e12, 67e12),
    "A100": (312e12, 156e12, 19.5e12),
    "L40S": (362e12, 183e12, 91.6e12),
    "L40": (181e12, 90.5e12, 90.5e12),
    "L4": (121e12, 60e12, 30.3e12),
    "A10": (125e12, 62.5e12, 31.2e12),
    "RTX 4090": (165e12, 82.6e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12, 35.6e12),
    "V100": (125e12, 15.7e12, 15.7e12),  # no TF32
    "T4": (65e12, 8.1e12, 8.1e12),  # no TF32
}


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """FLOP/s of square matmuls in `dtype`, measured now with this process's threads."""
    size = 4096 if device.type == "cuda" else 1024  # on 2 cores, 2048 reads no faster
    # A generator of its own: train re-reads the peak between epochs, where a draw from the
    # global one would shift dropout's and change the model.
    own = torch.Generator(device=device).manual_seed(0)
    a = torch.rand(size, size, device=device, generator=own).to(dtype)
    b = torch.rand(size, size, device=device, generator=own).to(dtype)
    a @ b  # warm-up: kernel selection and thread pool start
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * n / elapsed


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """One process's peak FLOP/s in `dtype`: a GPU's datasheet figure (None for a GPU not in
    the table); on a CPU, which has no datasheet to quote, a square matmul measured now."""
    if device.type != "cuda":
        return matmul_flops(device, dtype)
    name = torch.cuda.get_device_name(device)
    for model, (half, tf32, fp32) in GPU_PEAK.items():
        if model in name:
            if dtype != torch.float32:
                return half
            return tf32 if torch.backends.cudnn.allow_tf32 else fp32
    return None
