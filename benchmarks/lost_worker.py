"""A worker lost at random, again and again: `uv run python -m benchmarks.lost_worker [--runs 20]`.

Trains as `torchrun --standalone --nproc_per_node=2 --max-restarts=1 -m stages.train` on the
whole train split (a 64-wide model, 3 epochs, params.yaml otherwise), first once untouched, then
--runs times SIGKILLing one worker, a random rank, at a random point of a random epoch. Each run
must finish, resume from its last saved epoch, and end with the untouched run's model. Prints
each run: where it was killed, what the group did, its exit code, its time, and whether its
model equals the untouched one. --code DIR runs another checkout's stages (the same data) for a
before/after; --archive PATH as benchmarks.run takes it. 20 to 40 s a run on 2 cores.
"""

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.run import ARCHIVE, data_stages
from zimdb.paths import MODEL, TRAIN_STATE

ROOT = Path(__file__).resolve().parents[1]
SMALLER = {"embedding_dim": 64, "hidden_dim": 64, "epochs": 3}
LIMIT = 600  # seconds a run may take before it counts as hung


def descendants(pid: int) -> list[int]:
    """Every process under `pid`: torchrun starts its workers in sessions of their own, which
    killing its process group would leave running (a stopped one, for ever)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end(proc: subprocess.Popen) -> None:
    """`proc` and everything under it, killed (SIGKILL ends a stopped process too)."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def saved_epochs(root: Path) -> int:
    try:
        return len(torch.load(root / TRAIN_STATE, weights_only=True)["history"])
    except Exception:  # absent, or being replaced
        return 0


def workers(agent: int) -> list[int]:
    """The pids of the torchrun agent's worker processes, by rank (its children, in order)."""
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True)
    return sorted(int(pid) for pid in found.stdout.split())


def train(root: Path, code: Path, kill: tuple[int, float] | None, seconds_per_epoch: float):
    """One run in `root`; with `kill` = (epoch, fraction), a random worker is SIGKILLed that
    far into that epoch. Its exit code, seconds, and what happened."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node=2", "--max-restarts=1", "-m", "stages.train"]
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    start = time.monotonic()
    agent = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    note = "untouched"
    if kill:
        epoch, fraction = kill
        while saved_epochs(root) < epoch - 1 and agent.poll() is None:
            time.sleep(0.05)
        time.sleep(fraction * seconds_per_epoch)
        pids = workers(agent.pid)
        if pids and agent.poll() is None:
            rank = random.randrange(len(pids))
            os.kill(pids[rank], signal.SIGKILL)
            killed_at = time.monotonic()
            note = f"killed rank {rank} at {fraction:.0%} of epoch {epoch}"
    try:
        out, _ = agent.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        end(agent)
        out, _ = agent.communicate()
        return None, time.monotonic() - start, note + "; HUNG", out
    if kill and "killed" in note:
        note += f"; ended {time.monotonic() - killed_at:.0f} s later"
    return agent.returncode, time.monotonic() - start, note, out


def same_model(a: Path, b: Path) -> bool:
    x, y = (torch.load(r / MODEL, weights_only=True)["state_dict"] for r in (a, b))
    return all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose stages run")
    parser.add_argument("--seed", type=int, default=0, help="of the kills' ranks and times")
    parser.add_argument("--logs", type=Path, help="a folder for the output of runs that failed")
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data-project"
        data.mkdir()
        data_stages(args.archive, data)
        # The checkout's own params.yaml (its schema may be another's), with a smaller model.
        params = yaml.safe_load((args.code / "params.yaml").read_text())
        params["train"].update(SMALLER)
        (data / "params.yaml").write_text(yaml.safe_dump(params))

        def fresh(name: str) -> Path:
            root = Path(tmp) / name
            shutil.copytree(data, root, ignore=shutil.ignore_patterns("stages", "zimdb"))
            return root

        untouched = fresh("untouched")
        code, seconds, _, out = train(untouched, args.code, None, 0)
        if code != 0:
            sys.exit(f"benchmark: the untouched run failed:\n{out[-3000:]}")
        epochs = [float(m[1]) for m in re.finditer(r"\| ([\d.]+) s, \d+ samples/s", out)]
        per_epoch = max(epochs)
        print(f"untouched: {seconds:.0f} s, epochs of {per_epoch:.1f} s at most", flush=True)
        survived = 0
        for n in range(1, args.runs + 1):
            root = fresh(f"run{n}")
            kill = (random.randint(1, SMALLER["epochs"]), random.random())
            code, seconds, note, out = train(root, args.code, kill, per_epoch)
            same = code == 0 and same_model(root, untouched)
            survived += same
            resumed = next((line for line in out.splitlines() if "resuming from" in line), "")
            errors = [line for line in out.splitlines() if "Error" in line or "error:" in line]
            print(
                f"run {n:2}: {note}; exit {code}, {seconds:.0f} s; "
                f"{'same model' if same else 'NOT SURVIVED'}"
                + (f"; {resumed.strip()}" if resumed else "")
                + (f"; first error: {errors[0].strip()[:160]}" if errors and not same else ""),
                flush=True,
            )
            if not same and args.logs:
                (args.logs / f"run{n}.log").write_text(out)
            shutil.rmtree(root)
        print(f"\n{survived} of {args.runs} runs survived with the untouched run's model")


if __name__ == "__main__":
    main()
