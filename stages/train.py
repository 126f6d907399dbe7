"""Stage train: SentimentLSTM on the train split; the epoch with the best val accuracy is kept.

On CUDA: fp16 autocast with GradScaler and gradient checkpointing of the LSTM layers. Everywhere:
gradient accumulation over train.grad_accum_steps micro-batches, clipping after unscaling, a
resumable state after every epoch, and data-parallel training when train.nproc_per_node > 1 or
when started by torchrun. Writes data/model.pt and the curves under dvclive/train.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from zimdb import distributed, params
from zimdb.artifacts import read_encoded, read_vocab
from zimdb.batching import Encoded, batch_indices
from zimdb.device import autocast, peak_flops, resolve, uses_amp
from zimdb.errors import PipelineError, run
from zimdb.inference import logits
from zimdb.model import ModelConfig, SentimentLSTM
from zimdb.paths import ENCODED, MODEL, TRAIN_LIVE, VOCAB
from zimdb.train_state import TrainState, fingerprint
from zimdb.trained_model import TrainedModel
from zimdb.training import Stepper, lr_factor

LOG_EVERY = 20  # optimizer steps between looks at the loss: each look waits for the device


def main() -> None:
    p = params.load("train")
    device = resolve(p.device, "params.yaml: train.device")
    # Read and checked before any relaunch, so a mistake is one line, not one per process.
    vocab = read_vocab(VOCAB)
    records = {s: read_encoded(ENCODED / f"{s}.npy", len(vocab)) for s in ("train", "val")}
    if math.ceil(len(records["train"]) / p.batch_size) < p.nproc_per_node:
        raise PipelineError(
            f"params.yaml: {len(records['train'])} train reviews in batches of train.batch_size="
            f"{p.batch_size} are too few for train.nproc_per_node={p.nproc_per_node} processes"
        )
    if device.type == "cuda" and p.nproc_per_node > torch.cuda.device_count():
        raise PipelineError(
            f"params.yaml: train.nproc_per_node={p.nproc_per_node} but only "
            f"{torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    if p.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        sys.exit(distributed.relaunch("stages.train", p.nproc_per_node))
    group = distributed.init(device.type == "cuda")
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)

    # --- setup: data, model, optimizer, the state a resumed run continues
    train = Encoded.from_records(records["train"], device)
    val = Encoded.from_records(records["val"], device)
    torch.manual_seed(p.seed)  # the same initial weights in every process
    config = ModelConfig(
        len(vocab),
        p.embedding_dim,
        p.hidden_dim,
        p.num_layers,
        p.bidirectional,
        p.pooling,
        p.dropout,
        p.word_dropout,
        p.forget_bias,
    )
    model = SentimentLSTM(config).to(device)
    # Recomputation buys GPU memory; a CPU has memory to spare and would only lose time.
    model.grad_checkpointing = p.grad_checkpointing and device.type == "cuda"
    amp = uses_amp(device, p.amp)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    batches_per_rank = math.ceil(len(train) / p.batch_size) // group.world_size
    steps = p.epochs * math.ceil(batches_per_rank / p.grad_accum_steps)
    stepper = Stepper(
        DDP(model, device_ids=[device.index] if device.index is not None else None)
        if group.enabled
        else model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(p.lr_schedule, steps)),
        torch.amp.GradScaler("cuda", enabled=amp),
        autocast(device, p.amp),
        p.grad_clip,
    )
    # The code too: a state an older model or loop saved may not fit, or mean the same.
    inputs = [VOCAB, ENCODED / "train.npy", ENCODED / "val.npy", *code_files()]
    state = TrainState(
        stepper,
        model,
        np.random.default_rng(p.seed),
        fingerprint(p, inputs, group.world_size, device.type, amp),
    )
    torch.manual_seed(p.seed + group.rank)  # dropout: different in every process
    state.restore(p.epochs, device, group)
    peak = peak_flops(device, p.amp, group.local_world_size)
    flops_per_sample_token = 3 * model.flops_per_token()  # forward + backward, no recompute
    live = Live(str(TRAIN_LIVE), dvcyaml=None, save_dvc_exp=False) if group.is_main else None
    if group.is_main:
        print(
            f"device {device} x {group.world_size}; amp {'on (fp16)' if amp else 'off'}; gradient "
            f"checkpointing {'on' if model.grad_checkpointing else 'off'}"
            + ("" if device.type == "cuda" else " (amp and checkpointing apply to CUDA only)")
        )
        # DVC cleared dvclive/train: replay the resumed epochs. dvclive's step is the epoch
        # number, from 1 (the plots' x axis).
        for epoch, logged in enumerate(state.history, 1):
            live.step = epoch
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()

    # --- epochs
    for epoch in range(state.epoch + 1, p.epochs + 1):
        start = time.perf_counter()
        loss_sum, correct, seen, tokens = train_epoch(p, epoch, stepper, state.rng, train, group)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        val_loss_sum, val_correct = evaluate_shard(
            model, val, group, 4 * p.batch_size, stepper.autocast
        )
        totals = distributed.all_sum(group, loss_sum, correct, val_loss_sum, val_correct)
        train_seen = seen * group.world_size  # every process saw the same number of windows
        metrics = {
            "train/loss": totals[0].item() / train_seen,
            "train/acc": totals[1].item() / train_seen,
            "val/loss": totals[2].item() / len(val),
            "val/acc": totals[3].item() / len(val),
            "epoch_time_s": seconds,
            "samples_per_s": train_seen / seconds,
        }
        achieved = flops_per_sample_token * tokens * group.world_size / seconds
        if peak:
            metrics["utilisation"] = achieved / (peak * group.world_size)
        if not math.isfinite(metrics["val/loss"]):
            raise PipelineError(
                f"val loss is {metrics['val/loss']} after epoch {epoch}; lower train.lr"
            )
        state.end_epoch(metrics)
        if group.is_main:  # rank 0 alone logs
            print(
                f"epoch {epoch}/{p.epochs}: train loss {metrics['train/loss']:.4f} "
                f"acc {metrics['train/acc']:.4f} | val loss {metrics['val/loss']:.4f} "
                f"acc {metrics['val/acc']:.4f} | {seconds:.1f} s, "
                f"{metrics['samples_per_s']:.0f} samples/s, {achieved / 1e9:.0f} GFLOP/s"
                + (f" ({metrics['utilisation']:.0%} of peak)" if peak else "")
            )
            live.step = epoch
            for name, value in metrics.items():
                live.log_metric(name, value)
            live.next_step()
        state.save(group)

    # --- save
    if group.is_main:
        live.summary["best/epoch"], live.summary["best/val_acc"] = state.best_epoch, state.best_acc
        live.end()
        model.load_state_dict(state.best_weights)
        encode = params.load("encode")
        TrainedModel(model, vocab, encode.max_len, encode.truncate, amp).save(MODEL)
        print(f"saved {MODEL}: epoch {state.best_epoch}, val accuracy {state.best_acc:.4f}")
    distributed.shutdown(group)


def code_files() -> list[Path]:
    """The code that shapes a run's saved state: this stage, the model, the step, the batches."""
    modules = (__name__, SentimentLSTM.__module__, Stepper.__module__, Encoded.__module__)
    return [Path(sys.modules[m].__file__) for m in modules]


def train_epoch(p, epoch: int, stepper: Stepper, rng, train: Encoded, group):
    """One pass over this process's share of the train split; sums stay on the device."""
    stepper.model.train()
    everyone = batch_indices(train.lengths_np, p.batch_size, rng, together=group.world_size)
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
    return loss_sum, correct, seen, tokens


def evaluate_shard(model, val: Encoded, group, batch_size: int, autocast):
    """Summed val loss and correct count of this process's share; all_sum gives the whole."""
    shard = np.arange(group.rank, len(val), group.world_size)
    val_logits = logits(model, val.subset(shard), batch_size, autocast)
    labels = val.labels[torch.from_numpy(shard).to(val.labels.device)]
    loss_sum = F.binary_cross_entropy_with_logits(val_logits, labels, reduction="sum")
    return loss_sum, ((val_logits > 0) == (labels > 0.5)).sum()


if __name__ == "__main__":
    run(main)
