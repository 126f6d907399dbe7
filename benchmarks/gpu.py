"""The GPU check: `bash benchmarks/gpu.sh [--quick]` on a GPU machine with its own torch, or
`uv run python -m benchmarks.gpu [--quick]` in this project's environment.

Everything runs through the train stage's own functions (zimdb.training.run: assemble, windows,
epoch; the stage's Stepper and all_sum) with params.yaml's train section:

1. bf16: the dtype the LSTM computes in under bf16 autocast, and whether the run scales losses;
2. an epoch per precision (fp32, fp16 with GradScaler, bf16 where the device has it), after a
   first epoch that warms every batch width up: its time and the utilisation the train log
   would print, and fp16's speed over fp32's;
3. no host sync inside a step: 20 optimizer steps under torch.cuda.set_sync_debug_mode("error");
4. GradScaler: a window with an inf gradient is skipped (weights unchanged, scale halved) and
   the next one steps;
5. accumulation: the gradients of 4 micro-batches against one batch of the same reviews;
6. gradient checkpointing: what `auto` decides here, and the memory a step takes over the
   resident data and model (max_memory_allocated) and its time, on and off;
7. two data-parallel processes on the one device over gloo, through DDP and all_sum.

How long it takes, and what to expect on an H100/H200: docs/benchmarks.md, "The GPU check". It
reads data/encoded (after `dvc repro encode`, or copied to the GPU machine) or makes reviews of
IMDB's lengths at random, and says which.
Exits 1 if a check fails. `--device cpu` runs the same code on a CPU (bf16 with an enabled
scaler in place of fp16), as the rehearsal and the test suite do (with `--small`: a small model
and short reviews, where bf16 is emulated).
"""

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.run import train_params
from zimdb import params
from zimdb.data.artifacts import encoded_dtype, open_encoded
from zimdb.data.encoding import Encoding, read_encoding
from zimdb.model.batches import Encoded
from zimdb.model.device import prepare
from zimdb.model.precision import for_training, native_bf16
from zimdb.paths import ENCODED, ENCODING
from zimdb.training import distributed
from zimdb.training.run import Run, assemble, epoch, windows

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"embedding_dim": 16, "hidden_dim": 32}  # --small: the model, and reviews of 40 words
SMALL_MAX_LEN = 40


def load(folder: Path, reviews: int, small: bool, device) -> tuple[Encoded, Encoded, Encoding]:
    """Train (`reviews` of them) and val, from `folder` or made at random."""
    if (folder / ENCODING.name).exists() and not small:
        encoding = read_encoding(folder / ENCODING.name)
        size, width = len(encoding.vocab), encoding.max_len
        train, val = (open_encoded(folder / f"{s}.npy", size, width) for s in ("train", "val"))
        train = train[:reviews]
        print(f"data: {len(train):,} train and {len(val):,} val reviews of {folder}")
    else:
        vocab_size = params.load("vocab", ROOT / "params.yaml").size
        width = SMALL_MAX_LEN if small else params.load("encode", ROOT / "params.yaml").max_len
        vocab = ["<pad>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 2)]
        encoding = Encoding(vocab, width, "tail")
        train, val = random_reviews(reviews, encoding, 0), random_reviews(reviews // 9, encoding, 1)
        print(f"data: {reviews:,} random reviews of IMDB-like lengths ({folder} not read)")
    return Encoded.from_records(train, device), Encoded.from_records(val, device), encoding


def random_reviews(n: int, encoding: Encoding, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width = encoding.max_len
    records = np.zeros(n, dtype=encoded_dtype(len(encoding.vocab), width))
    # IMDB's cleaned reviews: median about 175 words, a long tail cut at max_len.
    lengths = np.clip(rng.lognormal(np.log(0.7 * width), 0.7, n), 5, width).astype(int)
    records["length"], records["label"] = lengths, rng.integers(0, 2, n)
    records["ids"] = rng.integers(2, len(encoding.vocab), (n, width))
    records["ids"][np.arange(width) >= lengths[:, None]] = 0
    return records


class Check:
    """Each check's verdict, printed as it comes; failed() at the end decides the exit code."""

    def __init__(self):
        self.failures: list[str] = []

    def __call__(self, name: str, ok: bool, detail: str) -> bool:
        print(f"  {detail} -> {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            self.failures.append(name)
        return ok


def named(device: str) -> torch.device:
    """--device as the run's tensors name it: CUDA with its index (DDP's device_ids need one)."""
    return torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def weights(run: Run) -> torch.Tensor:
    return torch.cat([w.detach().flatten().float().clone() for w in run.model.parameters()])


def bf16_dtype(p, train, encoding, check: Check) -> None:
    precision = for_training("bf16", train.device, "bf16")
    run = assemble(p, train, encoding, precision)
    ids = train.batch(np.arange(2))[0][:, :8]
    with torch.no_grad(), run.precision.autocast():
        dtype = run.model.states(ids).dtype
    scaled = run.precision.grad_scaler().is_enabled()
    consistent = (dtype == torch.bfloat16 and not scaled) or (dtype == torch.float16 and scaled)
    check(
        "bf16",
        consistent,
        f"under bf16 autocast the LSTM computes in {dtype}; GradScaler "
        f"{'on' if scaled else 'off'}"
        + (f" ({run.precision.warning})" if run.precision.warning else ""),
    )


def epochs(p, train, val, encoding, names: list[str]) -> dict[str, float]:
    """Each precision's second epoch, as the train stage runs and logs it."""
    seconds = {}
    for name in names:
        run = assemble(p, train, encoding, for_training(name, train.device, name))
        rng = np.random.default_rng(0)
        epoch(run, train, val, rng, 1)  # warm-up: cuDNN's or oneDNN's plans for every width
        metrics = epoch(run, train, val, rng, 2)
        seconds[name] = metrics["epoch_time_s"]
        use = f", {metrics['utilisation']:.1%} of peak" if "utilisation" in metrics else ""
        print(
            f"  {name}: epoch of {len(train):,} in {metrics['epoch_time_s']:.2f} s "
            f"({metrics['samples_per_s']:,.0f} samples/s, {metrics['gflops']:,.0f} GFLOP/s{use}); "
            f"val acc {metrics['val/acc']:.3f}; gradient checkpointing {run.checkpointing}",
            flush=True,
        )
    for name in names[1:]:
        print(f"  {name} against fp32: {seconds['fp32'] / seconds[name]:.2f} x the speed")
    return seconds


def no_host_sync(p, train, encoding, half, check: Check) -> None:
    device = train.device
    if device.type != "cuda":
        print("  not applicable on a CPU (nothing to wait for)")
        return
    for name in ("fp32", half.name):
        run = assemble(p, train, encoding, for_training(name, device, name))
        mine = windows(run, train, np.random.default_rng(0))[:22]
        for window in mine[:2]:  # warm-up, outside the check
            run.stepper.step(train.batches(window.rows))
        sync(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for window in mine[2:]:  # the batches gathered and sent inside the check too
                run.stepper.step(train.batches(window.rows))
            error = None
        except RuntimeError as e:
            error = str(e).strip().splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        check(
            "sync", error is None, f"{name}: 20 optimizer steps " + (error or "made no host sync")
        )


def scaler_skips(p, train, encoding, half, check: Check) -> None:
    run = assemble(p.model_copy(update={"grad_clip": 1.0}), train, encoding, half)
    scaler = run.stepper.scaler
    window = train.batches(windows(run, train, np.random.default_rng(0))[0].rows)
    scale, before = scaler.get_scale(), weights(run)
    hook = run.model.head.weight.register_hook(lambda grad: grad * float("inf"))
    run.stepper.step(window)
    unchanged = torch.equal(weights(run), before)
    halved = scaler.get_scale() == scale / 2
    hook.remove()
    run.stepper.step(window)
    moved = not torch.equal(weights(run), before)
    check(
        "scaler",
        unchanged and halved and moved,
        f"{half.name} with GradScaler ({type(run.stepper.optimizer).__name__}, fused "
        f"{run.stepper.optimizer.defaults['fused']}): inf gradient skipped, weights unchanged: "
        f"{unchanged}; scale {scale:.0f} -> {scaler.get_scale():.0f}; next window stepped: {moved}",
    )


def accumulation(p, train, encoding, precision, check: Check) -> None:
    """4 micro-batches' gradients against one batch of the same reviews (dropout off: the two
    would draw different masks)."""
    p = p.model_copy(update={"dropout": 0.0, "word_dropout": 0.0})
    rows = np.arange(4 * p.batch_size)
    grads = []
    for pieces in (np.split(rows, 4), [rows]):
        run = assemble(p, train, encoding, precision)
        run.stepper.backward(train.batches(pieces))
        scaler = run.stepper.scaler
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        grads.append(torch.cat([w.grad.flatten().float() / scale for w in run.model.parameters()]))
    error = (
        torch.linalg.vector_norm(grads[0] - grads[1]) / torch.linalg.vector_norm(grads[1])
    ).item()
    # Half precision rounds at every op, and so does fp32 on a GPU where cuDNN computes it in
    # TF32 (torch's default there): 10 bits of mantissa either way.
    tf32 = train.device.type == "cuda" and torch.backends.cudnn.allow_tf32
    bound = 1e-5 if precision.name == "fp32" and not tf32 else 3e-2
    check(
        "accumulation",
        error < bound,
        f"{precision.name}: 4 micro-batches of {p.batch_size} against one of {4 * p.batch_size}: "
        f"relative difference {error:.2e} (bound {bound:g})",
    )


def checkpointing(p, train, encoding, half) -> None:
    device = train.device
    run = assemble(p, train, encoding, half)
    print(
        f"  train.grad_checkpointing {p.grad_checkpointing} here: {'on' if run.model.grad_checkpointing else 'off'} ({run.checkpointing})"
    )
    longest = train.subset(np.argsort(train.lengths)[-8 * p.batch_size :])
    for on in (False, True):
        run = assemble(
            p.model_copy(update={"grad_checkpointing": on, "grad_accum_steps": 1}),
            longest,
            encoding,
            half,
        )
        mine = windows(run, longest, np.random.default_rng(0))
        run.stepper.step(longest.batches(mine[0].rows))  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        for window in mine:
            run.stepper.step(longest.batches(window.rows))
        sync(device)
        ms = 1000 * (time.perf_counter() - start) / len(mine)
        memory = (
            f"{(torch.cuda.max_memory_allocated(device) - resident) / 2**20:,.0f} MiB over the "
            f"resident {resident / 2**20:,.0f} MiB"
            if device.type == "cuda"
            else "memory: benchmarks.run (c) on a CPU"
        )
        width = longest.width(mine[0].rows[0])
        print(
            f"  checkpointing {'on ' if on else 'off'}: {ms:.1f} ms a step of {p.batch_size} x {width}; {memory}"
        )


def ddp(args, check: Check) -> None:
    """Two processes of this check's --ddp-worker on the one device, started by torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "benchmarks.gpu", "--ddp-worker", "--device", args.device]
    cmd += ["--encoded", str(args.encoded), "--reviews", str(args.reviews)]
    cmd += ["--small"] if args.small else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ddp:")]
    ok = done.returncode == 0 and len(lines) == 1 and lines[0].endswith("ok")
    detail = (
        lines[0][5:].rsplit(" -> ", 1)[0]
        if lines
        else (done.stderr.strip().splitlines() or ["no output"])[-1]
    )
    check(
        "ddp", ok, f"2 processes over gloo: {detail}" + ("" if ok else f" (exit {done.returncode})")
    )


def ddp_worker(args) -> None:
    """One of two processes: an epoch of the stage's loop on its half of the batches."""
    device = named(args.device)
    group = distributed.init("cpu", backend="gloo")  # gloo, both on the one device
    prepare(device)
    p = train_params(**(SMALL if args.small else {}))
    train, val, encoding = load(args.encoded, args.reviews, args.small, device)
    precision = for_training(p.precision, device, "params.yaml: train.precision")
    run = assemble(p, train, encoding, precision, group)
    mine = windows(run, train, np.random.default_rng(0))
    metrics = epoch(run, train, val, np.random.default_rng(0), 1)
    # The batches both processes took, counted by each: all_sum's total must be all of them.
    dealt = distributed.all_sum(
        group, torch.tensor([float(sum(w.samples for w in mine))], device=device)
    )
    counted = round(metrics["samples_per_s"] * metrics["epoch_time_s"])
    if group.is_main:
        ok = counted == int(dealt.item()) and 0 <= metrics["val/acc"] <= 1
        print(
            f"ddp: {counted:,} samples counted across the processes, {int(dealt.item()):,} dealt; "
            f"{metrics['samples_per_s']:,.0f} samples/s -> {'ok' if ok else 'FAILED'}",
            flush=True,
        )
    distributed.shutdown(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoded", type=Path, default=ROOT / ENCODED)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--reviews", type=int, default=22_500, help="train reviews (an epoch)")
    parser.add_argument("--quick", action="store_true", help="4,096 reviews: about a minute")
    parser.add_argument("--small", action="store_true", help="a small model, short reviews")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.reviews = min(args.reviews, 4096)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible; --device cpu runs the same code on the CPU")
    if args.ddp_worker:
        return ddp_worker(args)
    device = named(args.device)
    prepare(device)
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}"
        name += f", TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} for cuDNN"
    else:
        name = f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    print(f"device: {name}; torch {torch.__version__}; Python {sys.version.split()[0]}")
    start = time.perf_counter()
    p = train_params(**(SMALL if args.small else {}))
    train, val, encoding = load(args.encoded, args.reviews, args.small, device)
    # The device's half precision, with GradScaler: fp16 on CUDA; on a CPU, which has no fp16
    # LSTM, bf16 with the scaler turned on, to run the scaler's calls.
    if device.type == "cuda":
        half = for_training("fp16", device, "fp16")
    else:
        half = dataclasses.replace(for_training("bf16", device, "bf16"), scaled=True, warning=None)
    names = ["fp32"] + (["fp16"] if device.type == "cuda" else [])
    names += ["bf16"] if native_bf16(device) or (device.type == "cpu" and args.small) else []
    check = Check()
    sections = [
        ("1. bf16 autocast", lambda: bf16_dtype(p, train, encoding, check)),
        ("2. an epoch per precision", lambda: epochs(p, train, val, encoding, names)),
        ("3. no host sync inside a step", lambda: no_host_sync(p, train, encoding, half, check)),
        ("4. GradScaler", lambda: scaler_skips(p, train, encoding, half, check)),
        (
            "5. gradient accumulation",
            lambda: [
                accumulation(p, train, encoding, x, check)
                for x in (for_training("fp32", device, "fp32"), half)
            ],
        ),
        ("6. gradient checkpointing", lambda: checkpointing(p, train, encoding, half)),
        ("7. data-parallel processes", lambda: ddp(args, check)),
    ]
    for title, section in sections:
        print(f"\n{title}", flush=True)
        if title.startswith("1.") and not (native_bf16(device) or device.type == "cpu"):
            print("  this device has no bf16")
            continue
        try:
            section()
        except Exception as e:  # one section's crash is its failure; the others still run
            where = traceback.extract_tb(e.__traceback__)[-1]
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            check(title, False, f"{type(e).__name__}: {reason} ({where.filename}:{where.lineno})")
    print(
        f"\n{len(check.failures) or 'no'} check(s) failed; {time.perf_counter() - start:.0f} s in all"
    )
    sys.exit(1 if check.failures else 0)


if __name__ == "__main__":
    main()
