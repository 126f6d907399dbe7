"""Choosing the torch device from params, and the peak FLOP/s a run's utilisation is read against."""

import time

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


# Dense peak FLOP/s of common GPUs (vendor datasheets, SXM/boards without sparsity): fp16/bf16
# tensor cores under autocast, fp32 (no TF32) otherwise. The first key found in the device name
# wins, so longer names come before their prefixes (A100 before A10, L40 before L4).
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


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """FLOP/s of square matmuls in `dtype`, measured now with this process's threads."""
    size = 4096 if device.type == "cuda" else 1024  # on 2 cores, 2048 reads no faster
    # A generator of its own: train re-reads the peak between epochs, where a draw from the
    # global one would shift dropout's and change the model.
    own = torch.Generator(device=device).manual_seed(0)
    a = torch.rand(size, size, device=device, generator=own).to(dtype)
    b = torch.rand(size, size, device=device, generator=own).to(dtype)
    a @ b  # warm-up: kernel selection and thread pool start
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
    for model, (half, fp32) in GPU_PEAK.items():
        if model in name:
            return fp32 if dtype == torch.float32 else half
    return None
