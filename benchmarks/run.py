"""Benchmarks on the real data: `uv run python -m benchmarks.run [--archive PATH] [--steps N]`.

Prints measured figures only: data stages wall time; train and evaluation speed of the project's
loop, in each precision this machine runs natively, next to a reference loop written the original
way (a Dataset that cleans and tokenises in __getitem__, every batch padded to max_len, a default
DataLoader), as ratios from the same run; the original configuration (forget_bias 0) with and
without flushing denormals; peak memory with and without gradient checkpointing; and the loop's
achieved LSTM FLOP/s against a matmul in the same precision measured in the same run. The model
is params.yaml's; the CUDA checks are benchmarks/gpu.py.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zimdb import params
from zimdb.data.artifacts import read_encoded, read_vocab
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.device import matmul_flops
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.model.lstm import ModelConfig, SentimentLSTM
from zimdb.model.precision import Precision, flush_denormals, native_bf16
from zimdb.params import Train
from zimdb.paths import MODEL
from zimdb.training.step import Stepper

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/aclImdb_v1_labeled.tar.gz"
DATA_STAGES = ["download", "clean", "vocab", "encode"]
# The original script's loop, the reference: its vocabulary, batch and accumulation.
ORIGINAL_VOCAB, BATCH, ACCUM = 10000, 64, 4
# The original configuration of docs/experiments.md, on params.yaml's model otherwise.
ORIGINAL = {"forget_bias": 0.0, "dropout": 0.0, "grad_accum_steps": 4, "grad_clip": 0.0}


def data_stages(archive: Path, work: Path, stages: list[str] = DATA_STAGES) -> dict[str, float]:
    """Wall time of each data stage as a process, local archive to encoded arrays."""
    for name in ("stages", "zimdb"):
        shutil.copytree(ROOT / name, work / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(source="aclimdb", archive=str(archive), limit=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    times = {}
    for stage in stages:
        start = time.perf_counter()
        cmd = [sys.executable, "-m", f"stages.{stage}"]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if done.returncode:  # the stage's own one-line error, e.g. a missing --archive
            sys.exit(f"benchmark: stage {stage} failed: {done.stderr.strip().splitlines()[-1]}")
        times[stage] = time.perf_counter() - start
    return times


class OriginalDataset(Dataset):
    """The original script's way: clean and tokenise on every access, pad every review to 250."""

    def __init__(self, texts, labels, word_to_id, max_len):
        self.texts, self.labels, self.word_to_id, self.max_len = texts, labels, word_to_id, max_len

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        text = re.sub(r"<[^>]*>", " ", self.texts[i])
        text = re.sub(r"[^a-zA-Z']", " ", text).lower()
        ids = [self.word_to_id.get(w, 1) for w in text.split()][: self.max_len]
        ids += [0] * (self.max_len - len(ids))
        return torch.tensor(ids), torch.tensor(self.labels[i], dtype=torch.float32)


class OriginalModel(nn.Module):
    """Same size as SentimentLSTM; reads the final hidden state, after the padding."""

    def __init__(self, vocab_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 128, padding_idx=0)
        self.lstm = nn.LSTM(128, 256, batch_first=True)
        self.fc = nn.Linear(256, 1)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embedding(ids))
        return self.fc(h[-1]).squeeze(-1)


def reference_train(loader, steps: int) -> float:
    """Samples/s of the original loop over `steps` micro-batches."""
    torch.manual_seed(0)
    model = OriginalModel(ORIGINAL_VOCAB)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    it, seen = iter(loader), 0
    start = time.perf_counter()
    for step in range(steps):
        ids, y = next(it)
        loss = F.binary_cross_entropy_with_logits(model(ids), y) / ACCUM
        loss.backward()
        if (step + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def reference_eval(loader, batches: int) -> float:
    model = OriginalModel(ORIGINAL_VOCAB).eval()
    it, seen = iter(loader), 0
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(batches):
            ids, y = next(it)
            model(ids)
            seen += len(y)
    return seen / (time.perf_counter() - start)


def train_params(**overrides) -> Train:
    """params.yaml's train section, the one set of defaults, with `overrides`."""
    return params.load("train", ROOT / "params.yaml").model_copy(update=overrides)


def project_model(p: Train, vocab_size: int, device) -> SentimentLSTM:
    torch.manual_seed(0)
    return SentimentLSTM(ModelConfig.from_params(p, vocab_size)).to(device)


def project_train(
    train: Encoded, vocab_size: int, steps: int, p: Train, precision: Precision, checkpointing=False
):
    """Samples/s, tokens/s of the train stage's loop (bucketed batches, Stepper) over `steps`
    micro-batches of train.batch_size, train.grad_accum_steps to a window."""
    device = train.ids.device
    model = project_model(p, vocab_size, device)
    model.grad_checkpointing = checkpointing
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    stepper = Stepper(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
        precision.grad_scaler(),
        precision.autocast(),
        grad_clip=p.grad_clip,
        position_weight=p.position_loss,
    )
    batches = batch_indices(train.lengths_np, p.batch_size, np.random.default_rng(0))[:steps]
    seen = tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(batches), p.grad_accum_steps):
        micro = train.batches(batches[i : i + p.grad_accum_steps])
        stepper.step(micro)
        seen += sum(len(y) for _, _, y in micro)
        tokens += sum(ids.numel() for ids, _, _ in micro)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seen / seconds, tokens / seconds


def lstm_kernel(train: Encoded, steps: int, p: Train, precision: Precision) -> float:
    """Samples/s of nn.LSTM's forward and backward alone on random inputs of the loop's batch
    shapes: no embedding, head, optimizer or data work. The loop cannot beat this."""
    torch.manual_seed(0)
    device = train.ids.device
    lstm = nn.LSTM(p.embedding_dim, p.hidden_dim, batch_first=True).to(device)
    batches = batch_indices(train.lengths_np, p.batch_size, np.random.default_rng(0))[:steps]
    inputs = [
        torch.randn(len(b), int(train.lengths_np[b].max()), p.embedding_dim, device=device)
        for b in batches
    ]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x in inputs:
        with precision.autocast():
            out, _ = lstm(x)
        out[:, -1].float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def lstm_shaped_matmul_flops(device, steps: int, p: Train, dtype, seconds: float = 0.5) -> float:
    """FLOP/s of the LSTM's own matmuls for a batch of reviews of `steps` tokens, in `dtype`:
    the input projection of all steps [batch*steps, embedding] x [embedding, 4 hidden], then
    `steps` recurrent [batch, hidden] x [hidden, 4 hidden], in the proportion the LSTM does them."""
    b, e, h = p.batch_size, p.embedding_dim, p.hidden_dim
    x, w_ih = torch.randn(b * steps, e, device=device), torch.randn(e, 4 * h, device=device)
    state, w_hh = torch.randn(b, h, device=device), torch.randn(h, 4 * h, device=device)
    x, w_ih, state, w_hh = (t.to(dtype) for t in (x, w_ih, state, w_hh))
    x @ w_ih, state @ w_hh
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x @ w_ih
        for _ in range(steps):
            state @ w_hh
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n * 2 * b * steps * 4 * h * (e + h) / (time.perf_counter() - start)


def project_eval(data: Encoded, vocab_size: int, p: Train, precision: Precision) -> float:
    model = project_model(p, vocab_size, data.ids.device).eval()
    start = time.perf_counter()
    logits(model, data, 256, precision.autocast())
    return len(data) / (time.perf_counter() - start)


def peak_rss_mb(checkpointing: bool, encoded: Path, vocab_size: int, steps: int):
    """RSS of a fresh process with the data loaded, and its peak over `steps` train micro-batches
    of the longest reviews (full-width batches: the step that sets a run's peak), in the
    precision train.precision gives here.

    Read from /proc (VmRSS, VmHWM after resetting it through clear_refs), not getrusage: Linux
    carries ru_maxrss across exec, so a child would start at this process's own peak.
    """
    code = (
        "import re, torch; from benchmarks.run import *; "
        "from zimdb.model.precision import for_training; "
        "mib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())"
        "[1]) / 1024; "
        "p = train_params(grad_accum_steps=1); "
        "precision = for_training(p.precision, torch.device('cpu'), 'train.precision'); "
        f"t = Encoded.from_records(read_encoded('{encoded}', {vocab_size}), torch.device('cpu')); "
        "t = t.subset(np.argsort(t.lengths_np)[-8 * p.batch_size:]); "
        "open('/proc/self/clear_refs', 'w').write('5'); "
        "print(mib('VmRSS')); "
        f"project_train(t, {vocab_size}, {steps}, p, precision, checkpointing={checkpointing}); "
        "print(mib('VmHWM'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    before, peak = (float(v) for v in out.stdout.split()[-2:])
    return before, peak


def noop_repro(archive: Path, work: Path, repeats: int = 3) -> list[float]:
    """Wall time of `dvc repro` when nothing changed, in a small git + DVC copy of the project."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for name in files.stdout.split():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["download"].update(source="aclimdb", archive=str(archive), limit=200)
    params["train"].update(epochs=1, hidden_dim=16, embedding_dim=16)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "b"]):
        subprocess.run(cmd, cwd=work, check=True)
    dvc = [sys.executable, "-m", "dvc", "repro"]
    # The stages run as `python -m ...`: this interpreter's environment must come first on PATH.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(dvc, cwd=work, check=True, capture_output=True, env=env)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(
            dvc, cwd=work, check=True, capture_output=True, text=True, env=env
        ).stdout
        times.append(time.perf_counter() - start)
        assert "Running stage" not in out, out
    return times


def predict_speed(work: Path, precision: str) -> tuple[float, float] | None:
    """Seconds to the first prediction, and reviews/s over the 25,000 test reviews, of
    `python -m zimdb.predict` with the project's trained model as if trained in `precision` (the
    same weights; predict scores in a model's own precision where native). None when
    data/model.pt does not exist yet."""
    if not (ROOT / MODEL).exists():
        return None
    file = ModelFile.load(ROOT / MODEL)
    model = work / f"model-{precision}.pt"
    ModelFile(file.model, file.vocab, file.max_len, file.truncate, precision).save(model)
    cmd = [sys.executable, "-m", "zimdb.predict", "--model", str(model)]
    start = time.perf_counter()
    subprocess.run([*cmd, "A wonderful film."], cwd=ROOT, check=True, capture_output=True)
    first = time.perf_counter() - start
    reviews = pd.read_parquet(work / "data/raw/test.parquet")[["text"]]
    reviews.to_parquet(work / "reviews.parquet")
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "--file", str(work / "reviews.parquet"), "--output", str(work / "out.csv")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return first, len(reviews) / (time.perf_counter() - start)


def precisions(device: torch.device) -> list[Precision]:
    """fp32, and every lower precision this device runs natively."""
    names = ["fp32"] + (["fp16"] if device.type == "cuda" else [])
    names += ["bf16"] if native_bf16(device) else []
    return [Precision(name, device.type, "benchmark") for name in names]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--steps", type=int, default=48, help="micro-batches timed per loop")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = native_bf16(device)
    cpu = torch.cpu.get_capabilities().get("cpu_name", "unknown CPU")
    print(
        f"machine: {cpu}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"device {device}, native bf16: {bf16 or 'none'}"
    )
    flush_denormals(device)  # as the train stage does; (b') turns it off and on again
    p = train_params()
    runs = precisions(device)
    if not bf16:
        print("  (no native bf16 here: bf16 would be emulated, many times slower; not timed)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times = data_stages(args.archive, work)
        print("\n(a) data stages, 50,000 reviews, archive -> encoded arrays")
        for stage, seconds in times.items():
            print(f"  {stage:<10} {seconds:6.1f} s")
        print(f"  {'total':<10} {sum(times.values()):6.1f} s")

        vocab = read_vocab(work / "data/vocab.txt")
        records = read_encoded(work / "data/encoded/train.npy", len(vocab))
        train = Encoded.from_records(records, device)
        raw = pd.read_parquet(work / "data/clean/train.parquet")  # same reviews, original loader
        word_to_id = {w: i for i, w in enumerate(vocab[:ORIGINAL_VOCAB])}
        original = OriginalDataset(raw.text.tolist(), raw.label.tolist(), word_to_id, 250)
        shuffled = DataLoader(original, batch_size=BATCH, shuffle=True)
        test = Encoded.from_records(
            read_encoded(work / "data/encoded/test.npy", len(vocab)), device
        )
        n = len(train)

        print(
            f"\n(b) training, {args.steps} micro-batches: the reference (batch {BATCH}, "
            f"accumulation {ACCUM}, fp32) against the project's loop (params.yaml: batch "
            f"{p.batch_size}, accumulation {p.grad_accum_steps})"
        )
        ref = reference_train(shuffled, args.steps)
        print(f"  reference loop       {ref:7.0f} samples/s  (epoch of {n:,}: {n / ref:5.0f} s)")
        rates, peaks = {}, {}
        for precision in runs:
            # The host's speed drifts within a run: (e) compares the loop with the faster of two
            # matmul readings taken right before and right after it, never one from a slow spell.
            before = matmul_flops(device, precision.dtype, seconds=0.5)
            rates[precision.name] = project_train(train, len(vocab), args.steps, p, precision)
            after = matmul_flops(device, precision.dtype, seconds=0.5)
            peaks[precision.name] = (before, after)
            ours = rates[precision.name][0]
            print(
                f"  project loop, {precision.name}  {ours:7.0f} samples/s  (epoch of {n:,}: "
                f"{n / ours:5.0f} s); {ours / ref:.2f} x the reference"
            )
        for precision in runs[1:]:
            ratio = rates[precision.name][0] / rates["fp32"][0]
            print(f"  {precision.name} against fp32: {ratio:.2f} x")
        for precision in runs:
            kernel = lstm_kernel(train, args.steps, p, precision)
            print(
                f"  nn.LSTM forward+backward alone, {precision.name}, at the loop's batch shapes: "
                f"{kernel:.0f} samples/s; the loop runs at {rates[precision.name][0] / kernel:.0%} of it"
            )
        eval_batches = 20
        ref_eval = reference_eval(DataLoader(original, batch_size=256), eval_batches)
        subset = test.subset(np.arange(eval_batches * 256))
        print(f"  evaluation: reference {ref_eval:.0f} reviews/s (fp32)")
        evals = {}
        for precision in runs:
            evals[precision.name] = project_eval(subset, len(vocab), p, precision)
            print(
                f"  evaluation: project, {precision.name} {evals[precision.name]:.0f} reviews/s, "
                f"{evals[precision.name] / ref_eval:.2f} x the reference"
            )
        for precision in runs[1:]:
            print(
                f"  evaluation, {precision.name} against fp32: {evals[precision.name] / evals['fp32']:.2f} x"
            )

        print(
            "\n(b') the original configuration (forget_bias 0, dropout 0, accumulation 4, no "
            "clipping), with and without flushing denormals"
        )
        original_params = train_params(**ORIGINAL)
        for precision in runs:
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                rate, _ = project_train(train, len(vocab), args.steps, original_params, precision)
                print(
                    f"  {precision.name}, denormals {'flushed' if flush else 'kept   '}: "
                    f"{rate:7.0f} samples/s"
                )

        print("\n(e) utilisation: the LSTM loop's FLOP/s against a square matmul, same precision")
        model_flops = project_model(p, len(vocab), "cpu").flops_per_token()
        for precision in runs:
            before, after = peaks[precision.name]
            achieved = 3 * model_flops * rates[precision.name][1]
            peak = max(before, after)
            shaped = lstm_shaped_matmul_flops(
                device, round(train.lengths_np.mean()), p, precision.dtype
            )
            print(
                f"  {precision.name}: matmul {before / 1e9:.0f} / {after / 1e9:.0f} GFLOP/s before / "
                f"after the loop; LSTM loop {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the "
                f"faster; the LSTM's own matmul shapes alone {shaped / 1e9:.0f} GFLOP/s = "
                f"{shaped / peak:.0%} of it"
            )

        print("\n(c) peak memory, train.precision as params.yaml sets it")
        if device.type == "cuda":
            print("  on CUDA: benchmarks/gpu.py")
        else:
            encoded = work / "data/encoded/train.npy"
            for ckpt in (False, True):
                before, peak = peak_rss_mb(ckpt, encoded, len(vocab), 8)
                print(
                    f"  checkpointing {ckpt!s:<5}: RSS {before:.0f} MiB with the data loaded, "
                    f"peak {peak:.0f} MiB over 8 steps of {p.batch_size} full-width reviews: "
                    f"+{peak - before:.0f} MiB for training"
                )

        print("\n(f) dvc repro with nothing to do (small project copy)")
        times = noop_repro(args.archive, work / "noop")
        print("  " + ", ".join(f"{t:.2f} s" for t in times))
        print("\n(g) predict: data/model.pt's weights, saved as trained in each precision")
        speeds = {precision.name: predict_speed(work, precision.name) for precision in runs}
        for name, speed in speeds.items():
            if speed is None:
                print("  data/model.pt does not exist: run `dvc repro` first")
                break
            print(
                f"  {name}: start to first prediction {speed[0]:.1f} s; 25,000 reviews from a "
                f"file: {speed[1]:.0f} reviews/s ({speed[1] / speeds['fp32'][1]:.2f} x fp32)"
            )
    print(
        f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
