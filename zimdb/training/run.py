"""A training run, put together once, and its epoch: what the train stage runs, and what the
benchmarks and the GPU check time and check (they build nothing of the run themselves).

start() reads the encoded splits and checks them, takes this process's place among torchrun's
when the run is data-parallel, and assembles the run there: assemble() builds the model from
params, decides gradient checkpointing and loss scaling, and makes the optimizer, the
learning-rate schedule and the Stepper; windows() deals an epoch's
batches to this process in windows of train.grad_accum_steps; epoch() trains on them,
validates and returns the epoch's metrics, summed over all processes.
"""

import math
import sys
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from zimdb.data.artifacts import open_encoded
from zimdb.data.encoding import Encoding, read_encoding
from zimdb.errors import PipelineError
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.device import free_memory, peak_flops, prepare, resolve
from zimdb.model.inference import logits
from zimdb.model.lstm import ModelConfig, SentimentLSTM
from zimdb.model.precision import Precision, for_training
from zimdb.params import Train
from zimdb.paths import ENCODED, ENCODING
from zimdb.training import distributed
from zimdb.training.step import Stepper, lr_factor

TRAINED_ON = (ENCODED / "train.npy", ENCODED / "val.npy")  # what it reads besides ENCODING
LOG_EVERY = 20  # optimizer steps between looks at the loss: each look waits for the device
# Checkpointing recomputes a forward pass in backward (1.3-1.8x the step): `auto` turns it on
# only where a full batch's activations would take more than this share of the free memory.
CHECKPOINT_SHARE = 0.25


class Window(NamedTuple):
    rows: list[np.ndarray]  # the rows of train.grad_accum_steps micro-batches (fewer at the end)
    samples: int  # reviews in them
    tokens: int  # cells of their ids, padding within a batch included: the work done


@dataclass
class Run:
    p: Train
    device: torch.device
    group: distributed.Group
    precision: Precision
    model: SentimentLSTM  # the plain model; the Stepper holds the DDP wrapper when there is one
    stepper: Stepper
    checkpointing: str  # on or off, and why: for the log
    peak: float | None  # one process's peak FLOP/s in the run's precision: the highest reading


def assemble(
    p: Train,
    train: Encoded,
    encoding: Encoding,
    precision: Precision,
    group: distributed.Group = distributed.ONE,
) -> Run:
    """The run of train params `p` over the `train` split, encoded by `encoding`, on the device
    that holds it."""
    device, reviews = train.device, len(train)
    torch.manual_seed(p.seed)  # the same initial weights in every process
    model = SentimentLSTM(ModelConfig.from_params(p, len(encoding.vocab))).to(device)
    model.grad_checkpointing, checkpointing = checkpoint_or_not(
        p, model, encoding.max_len, precision
    )
    precision = scale_if_half(model, precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, fused=True)
    batches = math.ceil(reviews / p.batch_size) // group.world_size  # this process's, an epoch
    steps = p.epochs * math.ceil(batches / p.grad_accum_steps)
    stepper = Stepper(
        DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if group.enabled
        else model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(p.lr_schedule, steps)),
        precision.grad_scaler(),
        precision.autocast(),
        grad_clip=p.grad_clip,
        position_weight=p.position_loss,
    )
    # Before the first step: nothing else runs yet. Emulated bf16 has no peak worth quoting (its
    # matmul reads 1 GFLOP/s on an AVX2-capped Xeon, 3.8 s a reading).
    peak = None if precision.emulated else peak_flops(device, precision.dtype)
    torch.manual_seed(p.seed + group.rank)  # dropout: different in every process
    return Run(p, device, group, precision, model, stepper, checkpointing, peak)


def checkpoint_or_not(
    p: Train, model: SentimentLSTM, max_len: int, precision: Precision
) -> tuple[bool, str]:
    """train.grad_checkpointing: true or false as set; auto: on where a full batch's activations
    would take a real share of the device's free memory (never so far: at the defaults 289 MiB in
    fp32 and 194 MiB in bf16, about 1% of a 24 GiB machine's)."""
    if p.grad_checkpointing != "auto":
        return p.grad_checkpointing, f"train.grad_checkpointing {str(p.grad_checkpointing).lower()}"
    need = activation_bytes(model, p.batch_size, max_len, precision)
    free = free_memory(next(model.parameters()).device)
    on = need > CHECKPOINT_SHARE * free
    return on, (
        f"auto: a batch's activations {need / 2**20:,.0f} MiB, {need / free:.1%} of the "
        f"{free / 2**30:,.1f} GiB free"
    )


def activation_bytes(model: SentimentLSTM, batch: int, width: int, precision: Precision) -> int:
    """What one training forward pass of `batch` reviews `width` tokens wide keeps for backward:
    measured by autograd's own saved-tensor hooks on two small batches and scaled up (the
    activations grow with the tokens, the saved weights do not), so it holds for any model."""
    device = next(model.parameters()).device

    def saved(rows: int, cols: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        ids = torch.ones(rows, cols, dtype=torch.long, device=device)
        lengths = torch.full((rows,), cols, device=device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision.autocast():
            model(ids, lengths)
        return total

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        small, large = saved(2, 8), saved(2, 16)
    per_token = (large - small) / 16
    return round(small - 16 * per_token + per_token * batch * width)


def scale_if_half(model: SentimentLSTM, precision: Precision) -> Precision:
    """`precision`, with loss scaling where its autocast runs the LSTM in fp16 even so: torch's
    autocast wrapper of cuDNN's RNN casts to fp16 whatever the autocast dtype
    (aten/src/ATen/cudnn/AutocastRNN.cpp), so bf16 on a GPU may train the LSTM in fp16."""
    if precision.name != "bf16":
        return precision
    device = next(model.parameters()).device
    ids = torch.ones(1, 2, dtype=torch.long, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), precision.autocast():
        runs_in = model.states(ids).dtype
    if runs_in != torch.float16:
        return precision
    return replace(
        precision,
        scaled=True,
        warning="note: bf16 autocast runs the LSTM in fp16 on this device (torch's cuDNN "
        "autocast casts it so): GradScaler is on, as for fp16",
    )


def windows(run: Run, train: Encoded, rng: np.random.Generator) -> list[Window]:
    """This process's share of an epoch in a random order of length-bucketed batches, in
    windows of train.grad_accum_steps micro-batches, with what each holds (counted on the host:
    no device sync). Rows only: a window's batches are gathered when it is trained."""
    p, group = run.p, run.group
    everyone = batch_indices(train.lengths, p.batch_size, rng, together=group.world_size)
    mine = distributed.shard(everyone, group)
    cells = [len(idx) * train.width(idx) for idx in mine]
    step = p.grad_accum_steps
    return [
        Window(mine[i : i + step], sum(map(len, mine[i : i + step])), sum(cells[i : i + step]))
        for i in range(0, len(mine), step)
    ]


def train_windows(run: Run, train: Encoded, windows: list[Window], number: int) -> torch.Tensor:
    """Trains on `windows` of `train`; [loss sum, correct, samples, tokens] on the run's device.
    A non-finite loss is noted on the device and read at the next look, every LOG_EVERY steps."""
    stepper, device = run.stepper, run.device
    stepper.model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.zeros((), device=device, dtype=torch.long)  # 0: every step finite so far
    desc = f"epoch {number}/{run.p.epochs}"
    # On a terminal only (tqdm's None): in a log, a queued experiment's or the GPU check's, its
    # frames would be thousands of lines, and the log's last lines frames instead of the figures.
    hidden = None if run.group.is_main else True
    bar = tqdm(windows, desc=desc, unit="step", disable=hidden, file=sys.stderr)
    for step, window in enumerate(bar, 1):
        window_loss, window_correct = stepper.step(train.batches(window.rows))
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(window_loss), step, first_bad)
        loss_sum += window_loss
        correct += window_correct
        if step % LOG_EVERY == 0 or step == len(windows):
            bad, loss = torch.stack([first_bad.double(), window_loss.double()]).tolist()
            if bad:
                raise PipelineError(
                    f"train loss became non-finite at epoch {number}, step {int(bad)}; lower train.lr "
                    f"(now {run.p.lr}) or set train.grad_clip (now {run.p.grad_clip})"
                )
            bar.set_postfix(loss=f"{loss / window.samples:.4f}")
    counts = [sum(w.samples for w in windows), sum(w.tokens for w in windows)]
    return torch.stack([loss_sum, correct.double(), *torch.tensor(counts, device=device)])


def validate(run: Run, val: Encoded) -> torch.Tensor:
    """[loss sum, correct] over this process's share of `val`, on the run's device."""
    shard = np.arange(run.group.rank, len(val), run.group.world_size)
    out = logits(run.model, val, 4 * run.p.batch_size, run.stepper.autocast, shard)
    labels = torch.from_numpy(val.labels[shard]).to(out.device)
    loss_sum = F.binary_cross_entropy_with_logits(out, labels, reduction="sum")
    return torch.stack([loss_sum.double(), ((out > 0) == (labels > 0.5)).sum().double()])


def epoch(run: Run, train: Encoded, val: Encoded, rng: np.random.Generator, number: int) -> dict:
    """One epoch's training and its val metrics, summed over all processes."""
    mine = windows(run, train, rng)
    start = time.perf_counter()
    trained = train_windows(run, train, mine, number)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # Counts summed, not multiplied: the epoch's short batch is in one process's shard only.
    totals = distributed.all_sum(run.group, torch.cat([trained, validate(run, val)]))
    loss_sum, correct, seen, tokens, val_loss_sum, val_correct = totals.tolist()
    metrics = {
        "train/loss": loss_sum / seen,
        "train/acc": correct / seen,
        "val/loss": val_loss_sum / len(val),
        "val/acc": val_correct / len(val),
        "epoch_time_s": seconds,
        "samples_per_s": seen / seconds,
        "gflops": 3 * run.model.flops_per_token() * tokens / seconds / 1e9,  # fwd + bwd
    }
    if run.peak and run.device.type == "cpu":
        # One reading can come out low in a busy spell (384 GFLOP/s where the next run read
        # 787): the highest so far is the nearest to this machine's peak.
        run.peak = max(run.peak, peak_flops(run.device, run.precision.dtype))
    if run.peak:
        metrics["utilisation"] = metrics["gflops"] * 1e9 / (run.peak * run.group.world_size)
    if not math.isfinite(metrics["val/loss"]):
        raise PipelineError(
            f"val loss is {metrics['val/loss']} after epoch {number}; lower train.lr"
        )
    return metrics


def start(p: Train, relaunch_as: str | None = None) -> tuple[Run, Encoded, Encoded, Encoding]:
    """The run, its data on its device, and how the data was encoded; in this process's place
    among torchrun's when the run is data-parallel. With `relaunch_as` (a module), a process
    torchrun did not start, asked for train.nproc_per_node > 1, runs the module as that many
    under torchrun instead, and exits with its code."""
    device = resolve(p.device, "params.yaml: train.device")
    precision = for_training(p.precision, device, "params.yaml: train.precision")
    # Read and checked before any relaunch, so a mistake is one line, not one per process.
    encoding = read_encoding(ENCODING)
    size, width = len(encoding.vocab), encoding.max_len
    records = [open_encoded(path, size, width) for path in TRAINED_ON]  # memory maps
    check_batches(len(records[0]), p, p.nproc_per_node, "train.nproc_per_node=")
    if device.type == "cuda" and p.nproc_per_node > torch.cuda.device_count():
        raise PipelineError(
            f"params.yaml: train.nproc_per_node={p.nproc_per_node} but only "
            f"{torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    if relaunch_as and p.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        sys.exit(distributed.relaunch(relaunch_as, p.nproc_per_node))
    group = distributed.init(device.type)
    check_batches(len(records[0]), p, group.world_size, "torchrun's WORLD_SIZE=")
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    prepare(device)
    train, val = (Encoded.from_records(r, device) for r in records)
    run = assemble(p, train, encoding, precision, group)
    if group.is_main:
        if run.precision.warning:
            print(run.precision.warning, file=sys.stderr)
        peak = f"; peak {run.peak / 1e9:.0f} GFLOP/s" if run.peak else ""
        measured = " (a square matmul, measured now and after each epoch)"
        print(
            f"precision {run.precision.name} ({run.precision.why}); device {device} x "
            f"{group.world_size}; gradient checkpointing "
            f"{'on' if run.model.grad_checkpointing else 'off'} ({run.checkpointing})"
            + peak
            + (measured if peak and device.type == "cpu" else "")
        )
    return run, train, val, encoding


def check_batches(reviews: int, p: Train, processes: int, setting: str) -> None:
    """Every process needs a batch of its own: with none, it would make no optimizer step, and
    its learning-rate schedule would divide by zero steps. `setting` names who set `processes`."""
    if math.ceil(reviews / p.batch_size) < processes:
        raise PipelineError(
            f"params.yaml: {reviews} train reviews in batches of train.batch_size={p.batch_size} "
            f"are too few for {setting}{processes} processes"
        )
