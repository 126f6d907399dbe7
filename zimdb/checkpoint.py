"""The train stage's resumable state, kept between runs in data/train_checkpoint.pt.

It is the stage's own file, not a DVC output: DVC never caches, pushes or restores it, so a
clone that pulled the pipeline's outputs is up to date without it, and a killed run can leave
it behind without DVC taking it for a result.

Written atomically after every epoch. A run resumes from it only when it was made from the same
inputs and train params and has epochs left to do; anything else starts afresh. With a constant
learning rate train.epochs is left out of that comparison, so raising it continues a finished
run; a cosine schedule is shaped by the number of epochs, so there it counts. Everything that
decides the next epoch is kept — weights, optimizer, scheduler and scaler state, both random
generators, the best epoch so far and the logged history — so on CPU a resumed run ends with the
same model as one never interrupted.
"""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from zimdb.artifacts import atomic_path
from zimdb.paths import TRAIN_STATE

PATH = TRAIN_STATE


def fingerprint(p: SimpleNamespace, inputs: list[Path], world_size: int) -> str:
    digest = hashlib.sha256()
    settings = {k: v for k, v in vars(p).items() if k != "epochs" or p.lr_schedule != "constant"}
    digest.update(json.dumps([settings, world_size], sort_keys=True).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save(state: dict, path: Path = PATH) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load(fingerprint: str, epochs: int, device: torch.device, path: Path = PATH) -> dict | None:
    """The saved state if this run can continue it, else None (and why, printed)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # unreadable: a fresh start is always correct, so say so and go on
        print(f"{path} is unreadable ({type(e).__name__}); starting afresh")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"{path} is from other inputs or params; starting afresh")
        return None
    if state["epoch"] >= epochs:
        print(f"{path} has all {epochs} epochs done; starting afresh")
        return None
    print(f"resuming from {path}: epoch {state['epoch']} of {epochs} done")
    return state
