"""Data-parallel training with torch.distributed, launched by torchrun.

With train.nproc_per_node > 1 the train stage relaunches itself under torchrun on this machine;
for several machines, start torchrun yourself (see the README) and the stage joins its group.
"""

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE = Group()  # a run of one process


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(module: str, nproc: int) -> int:
    """Run `python -m module` as `nproc` processes under torchrun; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", module]
    print(f"launching {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    return subprocess.call(cmd)


def init(device_type: str, backend: str | None = None) -> Group:
    """Join torchrun's process group (`backend`, or NCCL on GPUs and gloo on CPUs), or a group
    of one."""
    if not launched_by_torchrun():
        return ONE
    group = Group(
        int(os.environ["RANK"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ["WORLD_SIZE"]),
    )
    if device_type == "cuda":
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend=backend or ("nccl" if device_type == "cuda" else "gloo"))
    return group


def shard(batches: list, group: Group) -> list:
    """This process's share of an epoch's batches: every world_size-th one, from its rank on.

    The epoch order is reshuffled every epoch, so each process sees a different shard each time;
    the few batches left over are dropped so every process makes the same number of steps.
    """
    usable = len(batches) - len(batches) % group.world_size
    return batches[group.rank : usable : group.world_size]


def all_sum(group: Group, values: torch.Tensor) -> torch.Tensor:
    """`values` summed over all processes (unchanged in a group of one). One tensor, made on the
    run's device: NCCL reduces nothing else, and one reduction is one wait."""
    if group.enabled:
        dist.all_reduce(values)
    return values


def broadcast(group: Group, obj, device: torch.device):
    """Rank 0's `obj` in every process (itself in a group of one)."""
    if not group.enabled:
        return obj
    shared = [obj]
    dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
    return shared[0]


def gather(group: Group, obj) -> list:
    """Every process's `obj` in rank order (on every rank; a list of one in a group of one)."""
    if not group.enabled:
        return [obj]
    gathered = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown() -> None:
    if dist.is_initialized():  # torchrun with one process starts a group too
        dist.destroy_process_group()
