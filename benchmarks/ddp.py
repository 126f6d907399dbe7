"""Where two data-parallel CPU processes spend a training step: `uv run python -m benchmarks.ddp
[--archive PATH] [--steps N]`.

Encodes the real data, then times a step of the train stage's shape (its model, batches dealt to
the ranks in runs of about the same width, Adam, no accumulation) in one process on every core,
and in two gloo processes of one thread each (as torchrun starts them), split into forward,
backward and optimizer step; the gradient all-reduce is the backward with gradient sync less the
same backward without.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.run import ARCHIVE, data_stages, project_model, train_params
from zimdb.data.artifacts import read_encoded, read_vocab
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.precision import flush_denormals, for_training


def phases(model, optimizer, batches: list, precision, sync: bool) -> tuple[dict[str, float], int]:
    """Seconds spent in each phase over `batches`, one optimizer step per batch; samples seen."""
    spent = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
    for ids, lengths, labels in batches:
        start = time.perf_counter()
        with model.no_sync() if isinstance(model, DDP) and not sync else nullcontext():
            with precision.autocast():
                out = model(ids, lengths).verdict
            loss = F.binary_cross_entropy_with_logits(out.float(), labels)
            forward = time.perf_counter()
            loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        spent["forward"] += forward - start
        spent["backward"] += backward - forward
        spent["optimizer"] += time.perf_counter() - backward
    return spent, sum(len(labels) for _, _, labels in batches)


def run(encoded: Path, steps: int, rank: int, world: int) -> None:
    cpu = torch.device("cpu")
    flush_denormals(cpu)
    p = train_params()
    precision = for_training(p.precision, cpu, "params.yaml: train.precision")
    vocab_size = len(read_vocab(encoded.parents[1] / "vocab.txt"))
    train = Encoded.from_records(read_encoded(encoded, vocab_size), cpu)
    order = batch_indices(train.lengths_np, p.batch_size, np.random.default_rng(0), together=world)
    batches = train.batches(order[rank : steps * world : world])
    model = project_model(p, vocab_size, cpu).train()
    model = DDP(model) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    phases(model, optimizer, batches[:2], precision, sync=True)  # warm-up: threads, gloo buffers
    for sync in (False, True) if world > 1 else (True,):
        spent, seen = phases(model, optimizer, batches, precision, sync)
        total = torch.tensor([sum(spent.values()), seen], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.MAX)  # the slower rank sets the pace
        if rank == 0:
            rate = seen * world / total[0].item()
            label = f"{world} process{'es' if world > 1 else ''}" + (
                "" if world == 1 else (", gradients all-reduced" if sync else ", no sync")
            )
            ms = ", ".join(f"{k} {1000 * v / len(batches):.0f}" for k, v in spent.items())
            print(f"  {label:<38} {rate:6.0f} samples/s; ms per step: {ms}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--steps", type=int, default=60, help="steps timed per process")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one of torchrun's processes
        dist.init_process_group("gloo")
        run(args.worker, args.steps, dist.get_rank(), dist.get_world_size())
        dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_stages(args.archive, Path(tmp))
        encoded = Path(tmp) / "data/encoded/train.npy"
        p = train_params()
        print(
            f"train stage's step, batches of {p.batch_size}, train.precision {p.precision}, "
            f"{args.steps} steps per process:"
        )
        run(encoded, args.steps, 0, 1)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        worker = ["-m", "benchmarks.ddp", "--worker", str(encoded), "--steps", str(args.steps)]
        env = dict(os.environ, OMP_NUM_THREADS="1")  # what torchrun sets for >1 process
        subprocess.run([*torchrun, "--nproc_per_node=2", *worker], check=True, env=env)


if __name__ == "__main__":
    main()
