"""Choosing the torch device from params, and the machine's matmul rate to compare against."""

import time

import torch

from zimdb.errors import PipelineError


def resolve(name: str, key: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without a GPU is a user error naming `key`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            f"params.yaml: {key} is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of square matmuls measured now: the ceiling a training loop is compared with."""
    size = 4096 if device.type == "cuda" else 1024  # big enough to keep a GPU busy per launch
    # Its own generator: drawing from the global one would shift dropout masks after a resume.
    gen = torch.Generator(device).manual_seed(0)
    a = torch.rand(size, size, device=device, generator=gen).to(dtype)
    b = torch.rand(size, size, device=device, generator=gen).to(dtype)
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
