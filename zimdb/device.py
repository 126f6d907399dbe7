"""Choosing the torch device from params, and the precision to compute in on it."""

from contextlib import AbstractContextManager, nullcontext

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


def uses_amp(device: torch.device, amp: bool) -> bool:
    """fp16 autocast trades precision for GPU speed; on a CPU it would only slow things down."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """The one precision context of a run: fp16 autocast where uses_amp, else none."""
    return torch.autocast("cuda", dtype=torch.float16) if uses_amp(device, amp) else nullcontext()
