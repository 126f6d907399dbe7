"""The CUDA paths checked and timed on one GPU, in one command of under 5 minutes:
`uv run python -m benchmarks.gpu [--encoded data/encoded]`.

With params.yaml's model and batch size, through the train stage's own loop (Stepper, bucketed
batches), it prints:

1. an epoch of the train split in fp32, fp16 with GradScaler, and bf16 where the GPU has it:
   seconds, samples/s and utilisation against the datasheet peak (zimdb.model.device.GPU_PEAK);
2. GradScaler under fp16: a window with an inf gradient is skipped with the weights unchanged
   and the scale halved, and the next window steps;
3. peak memory (max_memory_allocated) of 8 steps of full-width 64 x max_len batches, with and
   without gradient checkpointing, under fp16;
4. accumulation: the gradients of 4 micro-batches against those of one batch holding the same
   reviews, in fp32 and fp16.

It reads data/encoded/train.npy (after `dvc repro encode`) or, where that is absent, makes
reviews of IMDB's lengths at random, and says which. Exits 1 if a check of 2 or 4 fails.
`--device cpu --reviews 256` runs the same code on a CPU (bf16 with an enabled scaler for 2), as
the test suite does, so that nothing here first runs on the day a GPU is at hand.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from zimdb import params
from zimdb.data.artifacts import encoded_dtype
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.device import peak_flops
from zimdb.model.lstm import ModelConfig, SentimentLSTM
from zimdb.model.precision import Precision, native_bf16
from zimdb.paths import ENCODED
from zimdb.training.step import Stepper, lr_factor

ROOT = Path(__file__).resolve().parents[1]


def reviews(encoded: Path, vocab_size: int, max_len: int, limit: int, device) -> Encoded:
    path = encoded / "train.npy"
    if path.exists():
        records = np.load(path, allow_pickle=False)[:limit]
        print(f"data: {len(records):,} reviews of {path}")
    else:
        rng = np.random.default_rng(0)
        records = np.zeros(limit, dtype=encoded_dtype(vocab_size, max_len))
        # IMDB's cleaned reviews: median about 175 words, a long tail cut at max_len.
        lengths = np.clip(rng.lognormal(np.log(175), 0.7, limit), 5, max_len).astype(int)
        records["length"], records["label"] = lengths, rng.integers(0, 2, limit)
        records["ids"] = rng.integers(2, vocab_size, (limit, max_len))
        records["ids"][np.arange(max_len) >= lengths[:, None]] = 0
        print(f"data: {limit:,} random reviews of IMDB-like lengths ({path} is absent)")
    return Encoded.from_records(records, device)


def model(p: params.Train, vocab_size: int, device, checkpointing=False) -> SentimentLSTM:
    torch.manual_seed(0)
    built = SentimentLSTM(ModelConfig.from_params(p, vocab_size)).to(device).train()
    built.grad_checkpointing = checkpointing
    return built


def stepper(built, precision: Precision, scaler=None, grad_clip=0.0, position_weight=0.0):
    optimizer = torch.optim.Adam(built.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("constant", 1))
    scaler = scaler or precision.grad_scaler()
    autocast = precision.autocast()
    return Stepper(
        built,
        optimizer,
        schedule,
        scaler,
        autocast,
        grad_clip=grad_clip,
        position_weight=position_weight,
    )


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch(p: params.Train, train: Encoded, precision: Precision, vocab_size: int) -> None:
    """One epoch as the train stage runs it: the first window is a warm-up, left out."""
    device = train.ids.device
    built = model(p, vocab_size, device)
    run = stepper(
        built,
        precision,
        grad_clip=p.grad_clip,
        position_weight=p.position_loss,
    )
    order = batch_indices(train.lengths_np, p.batch_size, np.random.default_rng(0))
    batches = train.batches(order)
    windows = [
        batches[i : i + p.grad_accum_steps] for i in range(0, len(batches), p.grad_accum_steps)
    ]
    run.step(windows[0])
    sync(device)
    start, seen, tokens = time.perf_counter(), 0, 0
    for window in windows[1:]:
        run.step(window)
        seen += sum(len(labels) for _, _, labels in window)
        tokens += sum(ids.numel() for ids, _, _ in window)
    sync(device)
    seconds = time.perf_counter() - start
    achieved = 3 * built.flops_per_token() * tokens / seconds
    peak = peak_flops(device, precision.dtype)
    share = f", {achieved / peak:.1%} of the {peak / 1e12:.1f} TFLOP/s peak" if peak else ""
    print(
        f"  {precision.name}: {seen / seconds:8.0f} samples/s, epoch of {len(train):,} in "
        f"{len(train) * seconds / seen:6.1f} s; {achieved / 1e12:.2f} TFLOP/s{share}"
    )


def scaler_skips(p: params.Train, train: Encoded, precision: Precision, vocab_size: int) -> bool:
    device = train.ids.device
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16)  # enabled, as fp16 runs it
    run = stepper(model(p, vocab_size, device), precision, scaler, grad_clip=1.0)
    window = train.batches(batch_indices(train.lengths_np, p.batch_size)[:2])
    before = [w.detach().clone() for w in run.model.parameters()]
    hook = run.model.head.weight.register_hook(lambda grad: grad * float("inf"))
    run.step(window)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    halved = scaler.get_scale() == 2.0**15
    hook.remove()
    run.step(window)
    moved = not all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    ok = unchanged and halved and moved
    print(
        f"  {precision.name} with GradScaler: inf gradient skipped, weights unchanged: "
        f"{unchanged}; scale 65536 -> {scaler.get_scale():.0f}; next window stepped: {moved}"
        f" -> {'ok' if ok else 'FAILED'}"
    )
    return ok


def peak_memory(p, train: Encoded, precision: Precision, vocab_size: int) -> None:
    device = train.ids.device
    longest = train.subset(np.argsort(train.lengths_np)[-8 * p.batch_size :])
    batches = longest.batches(batch_indices(longest.lengths_np, p.batch_size))
    for checkpointing in (False, True):
        built = model(p, vocab_size, device, checkpointing)
        run = stepper(built, precision, position_weight=p.position_loss)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for batch in batches:
            run.step([batch])
        sync(device)
        if device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
        else:
            peak = "not measured on a CPU (benchmarks.run (c) reads the RSS)"
        width = max(ids.shape[1] for ids, _, _ in batches)
        print(
            f"  checkpointing {'on ' if checkpointing else 'off'}: peak {peak}, 8 steps of "
            f"{p.batch_size} x {width} tokens"
        )


def accumulation(p, train: Encoded, precision: Precision, vocab_size: int) -> bool:
    """4 micro-batches' gradients against one batch of the same reviews (dropout off: the two
    would draw different masks)."""
    device = train.ids.device
    p = p.model_copy(update={"dropout": 0.0, "word_dropout": 0.0})
    idx = np.arange(4 * p.batch_size)
    grads = []
    for pieces in (np.split(idx, 4), [idx]):
        run = stepper(model(p, vocab_size, device), precision)
        run.backward(train.batches(pieces))
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
        grads.append(torch.cat([w.grad.flatten().float() / scale for w in run.model.parameters()]))
    error = (
        torch.linalg.vector_norm(grads[0] - grads[1]) / torch.linalg.vector_norm(grads[1])
    ).item()
    bound = 1e-5 if precision.name == "fp32" else 3e-2  # half precision: a rounding per op
    ok = error < bound
    print(
        f"  {precision.name}: 4 micro-batches of {p.batch_size} vs one of {4 * p.batch_size}: "
        f"relative difference {error:.2e} (bound {bound:g}) -> {'ok' if ok else 'FAILED'}"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoded", type=Path, default=ROOT / ENCODED)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--reviews", type=int, default=22_500, help="train reviews (an epoch)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible; --device cpu runs the same code on the CPU")
    device = torch.device(args.device)
    p = params.load("train", ROOT / "params.yaml")
    vocab_size = params.load("vocab", ROOT / "params.yaml").size
    max_len = params.load("encode", ROOT / "params.yaml").max_len
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    train = reviews(args.encoded, vocab_size, max_len, args.reviews, device)
    half = "fp16" if device.type == "cuda" else "bf16"  # the scaled half precision of the device
    precisions = ["fp32", half] + (
        ["bf16"] if device.type == "cuda" and native_bf16(device) else []
    )
    chosen = {name: Precision(name, device.type, "benchmark") for name in precisions}

    print("\n1. an epoch through the train stage's loop")
    for precision in chosen.values():
        epoch(p, train, precision, vocab_size)
    print("\n2. GradScaler")
    ok = scaler_skips(p, train, chosen[half], vocab_size)
    print("\n3. peak memory, gradient checkpointing off and on")
    peak_memory(p, train, chosen[half], vocab_size)
    print("\n4. gradient accumulation")
    ok &= all(accumulation(p, train, chosen[name], vocab_size) for name in ("fp32", half))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
