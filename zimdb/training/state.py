"""The train stage's resumable state, kept between runs in data/train_state.pt.

It is the stage's own file, not a DVC output: DVC never caches, pushes or restores it, so a
clone that pulled the pipeline's outputs is up to date without it, and a killed run can leave
it behind without DVC taking it for a result.

Written atomically after every epoch, on every node of a data-parallel run (by its first
process), so a restarted group finds it wherever its rank 0 lands. A run resumes from it only
when it was made from the same inputs, code and train params, in the same precision and
processes, and has done no more epochs than asked; anything else starts afresh. A state with
every epoch done is continued too: only model.pt is left to write, so a failure after the last
epoch loses none of them. With a constant learning rate train.epochs is left out of that
comparison, so raising it continues a finished run; a cosine schedule is shaped by the number of
epochs, so there it counts. Everything that decides the next epoch is kept — weights, optimizer,
scheduler and scaler state, both random generators, the best epoch so far and the logged history
— so on CPU a resumed run ends with the same model as one never interrupted.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zimdb.data.artifacts import atomic_path
from zimdb.params import Train
from zimdb.paths import TRAIN_STATE
from zimdb.training.distributed import Group, broadcast, gather
from zimdb.training.step import Stepper

# The keys save() writes: a file without exactly these is of another version's layout.
LAYOUT = {
    "fingerprint",
    "processes",
    "model",
    "optimizer",
    "schedule",
    "scaler",
    "numpy_rng",
    "torch_rng",
    "history",
    "best",
}


def identity(p: Train, files: dict[str, Path], device: str, precision: str) -> dict[str, object]:
    """What a run is made of, by name: its train params (train.lr, ...), device type and
    precision, and the sha256 of each file it reads, data and code (`files`: a name, relative
    to the project, and where to read it). Every process of a run must have the same, and a
    saved state is continued only by a run of the same."""
    made_of = {f"train.{key}": value for key, value in p.model_dump().items()}
    made_of |= {"device": device, "precision": precision}
    for name, path in files.items():
        with open(path, "rb") as f:  # streamed: an encoded split can be larger than memory
            made_of[name] = hashlib.file_digest(f, "sha256").hexdigest()
    return made_of


def fingerprint(made_of: dict[str, object], world_size: int) -> str:
    """What a saved state must match to be continued: the run's identity() and its processes.
    With a constant learning rate train.epochs is left out, so raising it continues a finished
    run; a cosine schedule is shaped by the number of epochs."""
    constant = made_of.get("train.lr_schedule") == "constant"
    kept = {k: v for k, v in made_of.items() if not (constant and k == "train.epochs")}
    return hashlib.sha256(json.dumps([kept, world_size], sort_keys=True).encode()).hexdigest()


@dataclass
class TrainState:
    """What a run has done so far, bound to the objects it saves and restores."""

    stepper: Stepper
    model: torch.nn.Module  # the plain model, never the DDP wrapper
    rng: np.random.Generator  # batch order
    fingerprint: str
    history: list[dict] = field(default_factory=list)  # one dict of metrics per finished epoch
    best_epoch: int = 0
    best_acc: float = -1.0
    best_weights: dict | None = None

    @property
    def epoch(self) -> int:
        return len(self.history)

    def end_epoch(self, metrics: dict) -> None:
        self.history.append(metrics)
        if metrics["val/acc"] > self.best_acc:
            self.best_epoch, self.best_acc = self.epoch, metrics["val/acc"]
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self, group: Group, path: Path = TRAIN_STATE) -> None:
        """Every process calls it: each node's first process writes the node's copy, with every
        process's random generators."""
        rngs = gather(group, random_state())
        if not group.writes:
            return
        state = {
            "fingerprint": self.fingerprint,
            "processes": group.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.stepper.optimizer.state_dict(),
            "schedule": self.stepper.schedule.state_dict(),
            "scaler": self.stepper.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": rngs,  # per rank: dropout differs between processes
            "history": self.history,
            "best": (self.best_epoch, self.best_acc, self.best_weights),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)

    def restore(self, epochs: int, device: torch.device, group: Group, path=TRAIN_STATE) -> None:
        """Continue the saved run if it can be continued, else start afresh. Rank 0 decides
        (and says why); every process then resumes from what it read."""
        state = self._continuable(epochs, group.world_size, path) if group.is_main else None
        state = broadcast(group, state, device)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.stepper.optimizer.load_state_dict(state["optimizer"])
        self.stepper.schedule.load_state_dict(state["schedule"])
        self.stepper.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        cpu_rng, cuda_rng = state["torch_rng"][group.rank]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        self.history = state["history"]
        self.best_epoch, self.best_acc, self.best_weights = state["best"]

    def _continuable(self, epochs: int, processes: int, path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            # To the CPU: rank 0 broadcasts it, and tensors pickled on its GPU would unpickle onto
            # that same GPU in every process; load_state_dict moves them where they belong.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable: a fresh start is always correct, so say so and go on
            print(f"{path} is unreadable ({type(e).__name__}); starting afresh")
            return None
        if not isinstance(state, dict) or set(state) != LAYOUT:
            print(f"{path} is of another layout; starting afresh")
            return None
        if state["processes"] != processes:
            # A resumed run continues the batch order and learning-rate schedule it drew: both
            # are cut for its number of processes (each process's share, the steps an epoch).
            print(
                f"{path} was saved by a run of {state['processes']} process(es), this one has "
                f"{processes}: starting afresh (a run resumes only with the processes it began with)"
            )
            return None
        if state["fingerprint"] != self.fingerprint:
            print(f"{path} is from other inputs or params; starting afresh")
            return None
        if len(state["history"]) > epochs:
            print(
                f"{path} has {len(state['history'])} epochs done, more than {epochs}; starting afresh"
            )
            return None
        print(f"resuming from {path}: epoch {len(state['history'])} of {epochs} done")
        return state


def random_state() -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's torch generators: the CPU's, and its GPU's where there is one."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda
