"""Stage train: SentimentLSTM on the train split; the epoch with the best val accuracy is kept.

On CUDA: fp16 autocast with GradScaler and gradient checkpointing of the LSTM layers. Everywhere:
gradient accumulation over train.grad_accum_steps micro-batches, each window weighted by its own
number of samples, clipping after unscaling, a resumable checkpoint after every epoch, and
data-parallel training when train.nproc_per_node > 1 or when started by torchrun.
Writes data/model.pt and the curves under dvclive/train.
"""

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from zimdb import checkpoint, distributed, params
from zimdb.artifacts import read_encoded, read_vocab
from zimdb.batching import Encoded, batch_indices, logits
from zimdb.device import matmul_flops, resolve
from zimdb.errors import PipelineError, run
from zimdb.model import SentimentLSTM, save

ENCODED, VOCAB = Path("data/encoded"), Path("data/vocab.txt")
MODEL, LIVE = Path("data/model.pt"), Path("dvclive/train")


def accumulate(model, micro_batches, autocast, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward over one accumulation window; returns its summed loss and correct count.

    Each micro-batch's summed loss is divided by the window's sample count, so the accumulated
    gradients are those of one batch holding all the window's samples, whatever the sizes of its
    micro-batches (the last window of an epoch is usually short). Under DDP, gradients are
    averaged across processes once, on the window's last micro-batch.
    """
    window_size = sum(len(labels) for _, _, labels in micro_batches)
    total = torch.zeros((), device=micro_batches[0][2].device)
    correct = torch.zeros((), device=total.device, dtype=torch.long)
    for i, (ids, lengths, labels) in enumerate(micro_batches):
        if isinstance(model, DDP):
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        with autocast:
            out = model(ids, lengths)
        loss = F.binary_cross_entropy_with_logits(out.float(), labels, reduction="sum")
        scaler.scale(loss / window_size).backward()
        total += loss.detach()
        correct += ((out > 0) == (labels > 0.5)).sum()
    return total, correct


def lr_factor(schedule: str, steps: int):
    """train.lr's multiplier at each optimizer step: 1, or a cosine from 1 down to 0 at `steps`."""
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def main() -> None:
    p = params.load("train")
    device = resolve(p.device, "train.device")
    if p.nproc_per_node > 1 and not distributed.launched_by_torchrun():
        sys.exit(distributed.relaunch("stages.train", p.nproc_per_node))
    cuda = device.type == "cuda"
    group = distributed.init(cuda)
    if cuda:
        device = torch.device("cuda", group.local_rank)
    log = print if group.is_main else lambda *a, **k: None
    # AMP and checkpointing trade precision and recomputation for GPU speed and memory; on a CPU
    # they would only slow training down, so they apply to CUDA alone and the log says so.
    use_amp, use_ckpt = p.amp and cuda, p.grad_checkpointing and cuda
    log(
        f"device {device} x {group.world_size}; amp {'on (fp16)' if use_amp else 'off'}; "
        f"gradient checkpointing {'on' if use_ckpt else 'off'}"
        + ("" if cuda else " (amp and checkpointing apply to CUDA only)")
    )

    vocab_size = len(read_vocab(VOCAB))
    train = Encoded.from_records(read_encoded(ENCODED / "train.npy", vocab_size), device)
    val = Encoded.from_records(read_encoded(ENCODED / "val.npy", vocab_size), device)
    torch.manual_seed(p.seed)  # the same initial weights in every process
    raw_model = SentimentLSTM(
        vocab_size,
        p.embedding_dim,
        p.hidden_dim,
        p.num_layers,
        p.bidirectional,
        p.pooling,
        p.dropout,
        p.forget_bias,
        p.word_dropout,
    ).to(device)
    raw_model.grad_checkpointing = use_ckpt
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=p.lr)
    batches = range(math.ceil(len(train) / p.batch_size))
    steps = p.epochs * math.ceil(len(distributed.shard(batches, group)) / p.grad_accum_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(p.lr_schedule, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
    # Batch order: the same in every process (each takes its shard of it).
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed + group.rank)  # dropout: different in every process

    inputs = [VOCAB, ENCODED / "train.npy", ENCODED / "val.npy"]
    fingerprint = checkpoint.fingerprint(p, inputs, group.world_size)
    state = checkpoint.load(fingerprint, p.epochs, device) if group.is_main else None
    if group.enabled:  # every process resumes from what rank 0 found
        shared = [state]
        torch.distributed.broadcast_object_list(shared, src=0, device=device if cuda else None)
        state = shared[0]
    history, best = [], {"epoch": 0, "acc": -1.0, "state": None}
    if state:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        history, best = state["history"], state["best"]
    model = (
        DDP(raw_model, device_ids=[device.index] if cuda else None) if group.enabled else raw_model
    )

    matmul_dtype = torch.float16 if use_amp else torch.float32
    peak = matmul_flops(device, matmul_dtype)
    flops_per_token = 3 * raw_model.flops_per_token()  # forward + backward; recompute not counted
    live = None
    if group.is_main:
        live = Live(str(LIVE), dvcyaml=None, save_dvc_exp=False)
        # DVC cleared dvclive/train before this run: replay resumed epochs. dvclive's step is
        # the epoch number, from 1 (the plots' x axis).
        for epoch, logged in enumerate(history, 1):
            live.step = epoch
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()

    for epoch in range(len(history) + 1, p.epochs + 1):
        model.train()
        batches = batch_indices(train.lengths_np, p.batch_size, rng)
        batches = distributed.shard(batches, group)
        windows = [
            batches[i : i + p.grad_accum_steps] for i in range(0, len(batches), p.grad_accum_steps)
        ]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, tokens, start = 0, 0, time.perf_counter()
        bar = tqdm(
            windows, desc=f"epoch {epoch}/{p.epochs}", unit="step", disable=not group.is_main
        )
        for step, window in enumerate(bar, 1):
            micro_batches = [train.batch(idx) for idx in window]
            window_loss, window_correct = accumulate(model, micro_batches, autocast, scaler)
            if not torch.isfinite(window_loss):
                raise PipelineError(
                    f"train loss became {window_loss.item()} at epoch {epoch}, step {step}; "
                    f"lower train.lr (now {p.lr}) or set train.grad_clip (now {p.grad_clip})"
                )
            if p.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), p.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            window_size = sum(len(idx) for idx in window)
            loss_sum += window_loss
            correct += window_correct
            seen += window_size
            tokens += sum(ids.numel() for ids, _, _ in micro_batches)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{window_loss.item() / window_size:.4f}")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # The host's speed drifts: a reading taken in a slow spell alone would inflate the figure,
        # so the loop is compared with the fastest matmul measured so far, once per epoch.
        peak = max(peak, matmul_flops(device, matmul_dtype))
        utilisation = flops_per_token * tokens / seconds / peak

        # Validation is sharded like training; sums over all processes give the full split.
        shard = np.arange(group.rank, len(val), group.world_size)
        val_logits = logits(raw_model, val.subset(shard), 4 * p.batch_size, autocast)
        val_labels = val.labels[torch.from_numpy(shard).to(device)]
        val_loss_sum = F.binary_cross_entropy_with_logits(val_logits, val_labels, reduction="sum")
        val_correct = ((val_logits > 0) == (val_labels > 0.5)).sum()
        totals = distributed.all_sum(group, loss_sum, correct, val_loss_sum, val_correct)
        train_seen = seen * group.world_size  # every process saw the same number of windows
        metrics = {
            "train/loss": totals[0].item() / train_seen,
            "train/acc": totals[1].item() / train_seen,
            "val/loss": totals[2].item() / len(val),
            "val/acc": totals[3].item() / len(val),
            "epoch_time_s": seconds,
            "samples_per_s": train_seen / seconds,
            "matmul_utilisation": utilisation,
        }
        log(
            f"epoch {epoch}/{p.epochs}: train loss {metrics['train/loss']:.4f} "
            f"acc {metrics['train/acc']:.4f} | val loss {metrics['val/loss']:.4f} "
            f"acc {metrics['val/acc']:.4f} | {seconds:.1f} s, {metrics['samples_per_s']:.0f} "
            f"samples/s, {utilisation:.0%} of the measured matmul rate ({peak / 1e9:.0f} GFLOP/s)"
        )
        if not math.isfinite(metrics["val/loss"]):
            raise PipelineError(
                f"val loss is {metrics['val/loss']} after epoch {epoch}; lower train.lr"
            )
        history.append(metrics)
        if group.is_main:  # rank 0 alone keeps the best weights, checkpoints and saves
            if metrics["val/acc"] > best["acc"]:
                state = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
                best = {"epoch": epoch, "acc": metrics["val/acc"], "state": state}
            live.step = epoch
            for name, value in metrics.items():
                live.log_metric(name, value)
            live.next_step()
            checkpoint.save(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best": best,
                }
            )

    if group.is_main:
        live.summary["best/epoch"], live.summary["best/val_acc"] = best["epoch"], best["acc"]
        live.end()
        raw_model.load_state_dict(best["state"])
        save(raw_model, MODEL)
        log(f"saved {MODEL}: epoch {best['epoch']}, val accuracy {best['acc']:.4f}")
    distributed.shutdown(group)


if __name__ == "__main__":
    run(main)
