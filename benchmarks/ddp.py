"""Data-parallel CPU processes against one: `uv run python -m benchmarks.ddp [--archive PATH]
[--steps N]`.

Encodes the real data, then times the train stage's loop (zimdb.training.run, params.yaml's
train section) over the same number of micro-batches per process in one process on every core,
and in two gloo processes of one thread each, as torchrun starts them for
`train.nproc_per_node: 2` (batches dealt to the ranks in runs of about the same width,
gradients all-reduced once per window).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.run import ARCHIVE, data_stages, load_split, train_params
from zimdb.model.device import prepare
from zimdb.model.precision import for_training
from zimdb.paths import ENCODED
from zimdb.training import distributed
from zimdb.training.run import assemble, train_windows, windows


def worker(encoded: Path, steps: int) -> None:
    """One process's share: `steps` micro-batches of the stage's loop, timed after a warm-up."""
    cpu = torch.device("cpu")
    group = distributed.init("cpu")
    prepare(cpu)
    p = train_params()
    train, encoding = load_split(encoded, "train", cpu)
    precision = for_training(p.precision, cpu, "params.yaml: train.precision")
    run = assemble(p, train, encoding, precision, group)
    mine = windows(run, train, np.random.default_rng(0))
    train_windows(run, train, mine[:2], 1)  # warm-up: threads, oneDNN's kernels, gloo's buffers
    start = time.perf_counter()
    counts = train_windows(run, train, mine[2 : 2 + steps // p.grad_accum_steps], 1)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    if group.enabled:
        torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)  # the slowest
    samples = distributed.all_sum(group, counts)[2].item()
    if group.is_main:
        label = f"{group.world_size} process(es) of {torch.get_num_threads()} thread(s)"
        print(f"  {label:<32} {samples / seconds.item():6.0f} samples/s", flush=True)
    distributed.shutdown(group)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--steps", type=int, default=60, help="micro-batches timed per process")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_stages(args.archive, Path(tmp))
        encoded = Path(tmp) / ENCODED
        p = train_params()
        print(
            f"the train stage's loop, batches of {p.batch_size}, train.precision {p.precision}, "
            f"{args.steps} micro-batches per process:"
        )
        worker_args = ["-m", "benchmarks.ddp", "--worker", str(encoded), "--steps", str(args.steps)]
        subprocess.run([sys.executable, *worker_args], check=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        env = dict(os.environ, OMP_NUM_THREADS="1")  # what torchrun sets for >1 process
        subprocess.run([*torchrun, "--nproc_per_node=2", *worker_args], check=True, env=env)


if __name__ == "__main__":
    main()
