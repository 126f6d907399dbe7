"""Stage train: SentimentLSTM on the train split; the epoch with the best val accuracy is kept.

Mixed precision by train.precision (fp16 autocast with GradScaler on CUDA, bf16 on CPUs with
native bf16), gradient checkpointing of the LSTM layers on CUDA, gradient accumulation over
train.grad_accum_steps micro-batches, clipping after unscaling, a resumable state after every
epoch, and data-parallel training when train.nproc_per_node > 1 or when started by torchrun.
Writes data/model.pt and the curves under dvclive/train.
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from zimdb import errors, params
from zimdb.data.artifacts import read_encoded, read_vocab
from zimdb.errors import PipelineError
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.device import peak_flops, resolve
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.model.lstm import ModelConfig, SentimentLSTM
from zimdb.model.precision import Precision, flush_denormals, for_training
from zimdb.paths import ENCODED, MODEL, TRAIN_LIVE, VOCAB
from zimdb.training import distributed
from zimdb.training.state import TrainState, fingerprint
from zimdb.training.step import Stepper, lr_factor

LOG_EVERY = 20  # optimizer steps between looks at the loss: each look waits for the device


@dataclass
class Run:
    """Everything a run's epochs and its save use, built once by setup()."""

    p: params.Train
    encode: params.Encode  # as the run started: model.pt records how its data was encoded
    vocab: list[str]
    group: distributed.Group
    precision: Precision
    train: Encoded
    val: Encoded
    model: SentimentLSTM
    stepper: Stepper
    state: TrainState
    peak: float | None  # one process's peak FLOP/s in the run's precision: the highest reading
    live: Live | None  # rank 0's


def main() -> None:
    run = setup()
    for epoch in range(run.state.epoch + 1, run.p.epochs + 1):
        run.state.end_epoch(train_and_validate(run, epoch))
        if run.group.is_main:
            log(run, epoch)
        run.state.save(run.group)
    save(run)
    distributed.shutdown(run.group)


def setup() -> Run:
    """Params, data, processes, model, optimizer, and the saved state a resumed run continues."""
    p, encode = params.load("train"), params.load("encode")
    device = resolve(p.device, "params.yaml: train.device")
    precision = for_training(p.precision, device, "params.yaml: train.precision")
    # Read and checked before any relaunch, so a mistake is one line, not one per process.
    vocab = read_vocab(VOCAB)
    records = {s: read_encoded(ENCODED / f"{s}.npy", len(vocab)) for s in ("train", "val")}
    check_batches(len(records["train"]), p, p.nproc_per_node, "train.nproc_per_node=")
    if device.type == "cuda" and p.nproc_per_node > torch.cuda.device_count():
        raise PipelineError(
            f"params.yaml: train.nproc_per_node={p.nproc_per_node} but only "
            f"{torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    if p.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        sys.exit(distributed.relaunch("stages.train", p.nproc_per_node))
    group = distributed.init(device.type == "cuda")
    check_batches(len(records["train"]), p, group.world_size, "torchrun's WORLD_SIZE=")
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    flush_denormals(device)

    train = Encoded.from_records(records["train"], device)
    val = Encoded.from_records(records["val"], device)
    torch.manual_seed(p.seed)  # the same initial weights in every process
    model = SentimentLSTM(ModelConfig.from_params(p, len(vocab))).to(device)
    # Recomputation buys GPU memory; a CPU has memory to spare and would only lose time.
    model.grad_checkpointing = p.grad_checkpointing and device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    batches_per_rank = math.ceil(len(train) / p.batch_size) // group.world_size
    steps = p.epochs * math.ceil(batches_per_rank / p.grad_accum_steps)
    stepper = Stepper(
        DDP(model, device_ids=[device.index] if device.index is not None else None)
        if group.enabled
        else model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(p.lr_schedule, steps)),
        precision.grad_scaler(),
        precision.autocast(),
        grad_clip=p.grad_clip,
        position_weight=p.position_loss,
    )
    # The code too: a state an older model, loop or state layout saved may not fit, or mean the
    # same.
    inputs = [VOCAB, ENCODED / "train.npy", ENCODED / "val.npy", *code_files()]
    state = TrainState(
        stepper,
        model,
        np.random.default_rng(p.seed),
        fingerprint(p, inputs, group.world_size, device.type, precision.name),
    )
    peak = peak_flops(device, precision.dtype)  # before the first step: nothing else runs yet
    live = None
    if group.is_main:
        if precision.warning:
            print(precision.warning, file=sys.stderr)
        checkpointing = "on" if model.grad_checkpointing else "off"
        print(
            f"precision {precision.name} ({precision.why}); device {device} x "
            f"{group.world_size}; gradient checkpointing {checkpointing}"
            + ("" if device.type == "cuda" else " (CUDA only)")
            + (f"; peak {peak / 1e9:.0f} GFLOP/s" if peak else "")
            + (
                " (a square matmul, measured now and after each epoch)"
                if peak and device.type == "cpu"
                else ""
            )
        )
    torch.manual_seed(p.seed + group.rank)  # dropout: different in every process
    state.restore(p.epochs, device, group)
    if group.is_main:
        live = Live(str(TRAIN_LIVE), dvcyaml=None, save_dvc_exp=False)
        # DVC cleared dvclive/train: replay the resumed epochs. dvclive's step is the epoch
        # number, from 1 (the plots' x axis).
        for epoch, logged in enumerate(state.history, 1):
            live.step = epoch
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()
    return Run(p, encode, vocab, group, precision, train, val, model, stepper, state, peak, live)


def check_batches(reviews: int, p: params.Train, processes: int, setting: str) -> None:
    """Every process needs a batch of its own: with none, it would make no optimizer step, and
    its learning-rate schedule would divide by zero steps. `setting` names who set `processes`."""
    if math.ceil(reviews / p.batch_size) < processes:
        raise PipelineError(
            f"params.yaml: {reviews} train reviews in batches of train.batch_size={p.batch_size} "
            f"are too few for {setting}{processes} processes"
        )


def code_files() -> list[Path]:
    """The code that shapes a run's saved state: this stage, the model, the step, the batches,
    the precision, the processes and the state's own layout."""
    modules = (
        __name__,
        SentimentLSTM.__module__,
        Stepper.__module__,
        Encoded.__module__,
        Precision.__module__,
        distributed.__name__,
        TrainState.__module__,
    )
    return [Path(sys.modules[m].__file__) for m in modules]


def train_and_validate(run: Run, epoch: int) -> dict:
    """One epoch's training and its val metrics, summed over all processes."""
    start = time.perf_counter()
    loss_sum, correct, seen, tokens = train_epoch(run, epoch)
    if run.train.ids.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    val_loss_sum, val_correct = evaluate_shard(run)
    # Counts summed, not multiplied: the epoch's short batch is in one process's shard only.
    totals = distributed.all_sum(
        run.group, loss_sum, correct, seen, tokens, val_loss_sum, val_correct
    )
    loss_sum, correct, seen, tokens, val_loss_sum, val_correct = (t.item() for t in totals)
    metrics = {
        "train/loss": loss_sum / seen,
        "train/acc": correct / seen,
        "val/loss": val_loss_sum / len(run.val),
        "val/acc": val_correct / len(run.val),
        "epoch_time_s": seconds,
        "samples_per_s": seen / seconds,
        "gflops": 3 * run.model.flops_per_token() * tokens / seconds / 1e9,  # fwd + bwd
    }
    if run.peak and run.train.ids.device.type == "cpu":
        # One reading can come out low in a busy spell (384 GFLOP/s where the next run read
        # 787): the highest so far is the nearest to this machine's peak.
        run.peak = max(run.peak, peak_flops(run.train.ids.device, run.precision.dtype))
    if run.peak:
        metrics["utilisation"] = metrics["gflops"] * 1e9 / (run.peak * run.group.world_size)
    if not math.isfinite(metrics["val/loss"]):
        raise PipelineError(
            f"val loss is {metrics['val/loss']} after epoch {epoch}; lower train.lr"
        )
    return metrics


def train_epoch(run: Run, epoch: int):
    """One pass over this process's share of the train split; sums stay on the device."""
    p, stepper, group, train = run.p, run.stepper, run.group, run.train
    stepper.model.train()
    everyone = batch_indices(
        train.lengths_np, p.batch_size, run.state.rng, together=group.world_size
    )
    mine = train.batches(distributed.shard(everyone, group))
    windows = [mine[i : i + p.grad_accum_steps] for i in range(0, len(mine), p.grad_accum_steps)]
    device = train.ids.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.zeros((), device=device, dtype=torch.long)  # 0: every step finite so far
    seen = tokens = 0
    bar = tqdm(windows, desc=f"epoch {epoch}/{p.epochs}", unit="step", disable=not group.is_main)
    for step, window in enumerate(bar, 1):
        window_loss, window_correct = stepper.step(window)
        # Noted on the device, read at the next look: a check every step would stall a GPU.
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(window_loss), step, first_bad)
        loss_sum += window_loss
        correct += window_correct
        size = sum(len(labels) for _, _, labels in window)
        seen += size
        tokens += sum(ids.numel() for ids, _, _ in window)
        if step % LOG_EVERY == 0 or step == len(windows):
            bad, loss = torch.stack([first_bad.double(), window_loss.double() / size]).tolist()
            if bad:
                raise PipelineError(
                    f"train loss became non-finite at epoch {epoch}, step {int(bad)}; lower "
                    f"train.lr (now {p.lr}) or set train.grad_clip (now {p.grad_clip})"
                )
            bar.set_postfix(loss=f"{loss:.4f}")
    return loss_sum, correct, torch.tensor(seen), torch.tensor(tokens)


def evaluate_shard(run: Run):
    """Summed val loss and correct count of this process's share; all_sum gives the whole."""
    val, group = run.val, run.group
    shard = np.arange(group.rank, len(val), group.world_size)
    val_logits = logits(run.model, val.subset(shard), 4 * run.p.batch_size, run.stepper.autocast)
    labels = val.labels[torch.from_numpy(shard).to(val.labels.device)]
    loss_sum = F.binary_cross_entropy_with_logits(val_logits, labels, reduction="sum")
    return loss_sum, ((val_logits > 0) == (labels > 0.5)).sum()


def log(run: Run, epoch: int) -> None:
    """The epoch's line on stdout and its metrics in dvclive (rank 0 alone)."""
    metrics = run.state.history[-1]
    print(
        f"epoch {epoch}/{run.p.epochs}: train loss {metrics['train/loss']:.4f} "
        f"acc {metrics['train/acc']:.4f} | val loss {metrics['val/loss']:.4f} "
        f"acc {metrics['val/acc']:.4f} | {metrics['epoch_time_s']:.1f} s, "
        f"{metrics['samples_per_s']:.0f} samples/s, {metrics['gflops']:.0f} GFLOP/s"
        + (f" ({metrics['utilisation']:.0%} of peak)" if "utilisation" in metrics else "")
    )
    run.live.step = epoch
    for name, value in metrics.items():
        run.live.log_metric(name, value)
    run.live.next_step()


def save(run: Run) -> None:
    """model.pt from the best epoch's weights, written by rank 0."""
    if not run.group.is_main:
        return
    state = run.state
    run.live.summary["best/epoch"], run.live.summary["best/val_acc"] = (
        state.best_epoch,
        state.best_acc,
    )
    run.live.end()
    run.model.load_state_dict(state.best_weights)
    ModelFile(
        run.model, run.vocab, run.encode.max_len, run.encode.truncate, run.precision.name
    ).save(MODEL)
    print(f"saved {MODEL}: epoch {state.best_epoch}, val accuracy {state.best_acc:.4f}")


if __name__ == "__main__":
    errors.run(main)
