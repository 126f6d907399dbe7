"""Stage train: SentimentLSTM on the train split, the epoch with the best val accuracy kept.

On CUDA: fp16 autocast with GradScaler, gradient checkpointing of the LSTM layers. Everywhere:
gradient accumulation over train.grad_accum_steps micro-batches, each window weighted by its own
number of samples (the last, partial one included), clipping after unscaling. Per-epoch curves
go to dvclive/train; the model to data/model.pt.
"""

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dvclive import Live
from zimdb import params
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
    micro-batches (the last window of an epoch is usually short).
    """
    window_size = sum(len(labels) for _, _, labels in micro_batches)
    total = torch.zeros((), device=micro_batches[0][2].device)
    correct = torch.zeros((), device=total.device, dtype=torch.long)
    for ids, lengths, labels in micro_batches:
        with autocast:
            out = model(ids, lengths)
        loss = F.binary_cross_entropy_with_logits(out.float(), labels, reduction="sum")
        scaler.scale(loss / window_size).backward()
        total += loss.detach()
        correct += ((out > 0) == (labels > 0.5)).sum()
    return total, correct


def main() -> None:
    p = params.load("train")
    device = resolve(p.device, "train.device")
    cuda = device.type == "cuda"
    # AMP and checkpointing trade precision and compute for GPU speed and memory; on CPU they
    # would only slow training down, so they apply to CUDA alone and the log says so.
    use_amp, use_ckpt = p.amp and cuda, p.grad_checkpointing and cuda
    print(
        f"device {device}; amp {'on (fp16)' if use_amp else 'off'}; gradient checkpointing "
        f"{'on' if use_ckpt else 'off'}"
        + ("" if cuda else " (amp and checkpointing apply to CUDA only)")
    )
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)

    vocab_size = len(read_vocab(VOCAB))
    train = Encoded.from_records(read_encoded(ENCODED / "train.npy", vocab_size), device)
    val = Encoded.from_records(read_encoded(ENCODED / "val.npy", vocab_size), device)
    model = SentimentLSTM(
        vocab_size,
        p.embedding_dim,
        p.hidden_dim,
        p.num_layers,
        p.bidirectional,
        p.pooling,
        p.dropout,
    ).to(device)
    model.grad_checkpointing = use_ckpt
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    peak = matmul_flops(device, torch.float16 if use_amp else torch.float32)
    flops_per_token = (
        3 * model.flops_per_token()
    )  # forward + backward (2x), recomputation not counted

    best_acc, best_state = -1.0, None
    with Live(str(LIVE), dvcyaml=None, save_dvc_exp=False) as live:
        for epoch in range(1, p.epochs + 1):
            model.train()
            batches = batch_indices(train.lengths_np, p.batch_size, rng)
            windows = [
                batches[i : i + p.grad_accum_steps]
                for i in range(0, len(batches), p.grad_accum_steps)
            ]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            tokens, start = 0, time.perf_counter()
            bar = tqdm(windows, desc=f"epoch {epoch}/{p.epochs}", unit="step", leave=False)
            for step, window in enumerate(bar, 1):
                micro_batches = [train.batch(idx) for idx in window]
                window_loss, window_correct = accumulate(model, micro_batches, autocast, scaler)
                window_size = sum(len(labels) for _, _, labels in micro_batches)
                correct += window_correct
                tokens += sum(ids.numel() for ids, _, _ in micro_batches)
                if not torch.isfinite(window_loss):
                    raise PipelineError(
                        f"train loss became {window_loss.item()} at epoch {epoch}, step {step}; "
                        f"lower train.lr (now {p.lr}) or set train.grad_clip"
                    )
                if p.grad_clip > 0:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += window_loss
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{window_loss.item() / window_size:.4f}")
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            train_loss, train_acc = loss_sum.item() / len(train), correct.item() / len(train)
            val_logits = logits(model, val, p.batch_size, autocast)
            val_loss = F.binary_cross_entropy_with_logits(val_logits, val.labels).item()
            val_acc = ((val_logits > 0) == (val.labels > 0.5)).float().mean().item()
            utilisation = flops_per_token * tokens / seconds / peak
            print(
                f"epoch {epoch}/{p.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f} s, "
                f"{len(train) / seconds:.0f} samples/s, {utilisation:.0%} of the measured "
                f"matmul rate ({peak / 1e9:.0f} GFLOP/s)"
            )
            if not math.isfinite(val_loss):
                raise PipelineError(f"val loss is {val_loss} after epoch {epoch}; lower train.lr")
            for name, value in {
                "train/loss": train_loss,
                "train/acc": train_acc,
                "val/loss": val_loss,
                "val/acc": val_acc,
                "epoch_time_s": seconds,
                "samples_per_s": len(train) / seconds,
                "matmul_utilisation": utilisation,
            }.items():
                live.log_metric(name, value)
            live.next_step()
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        live.summary["best/epoch"], live.summary["best/val_acc"] = best_epoch, best_acc
    model.load_state_dict(best_state)
    save(model, MODEL)
    print(f"saved {MODEL}: epoch {best_epoch}, val accuracy {best_acc:.4f}")


if __name__ == "__main__":
    run(main)
