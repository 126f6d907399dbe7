"""Benchmarks on the real data: `uv run python -m benchmarks.run [--archive PATH] [--steps N]`.

Prints measured figures only: data stages wall time; train and evaluation speed of the project's
loop next to a reference loop written the original way (a Dataset that cleans and tokenises in
__getitem__, every batch padded to max_len, a default DataLoader), as ratios from the same run;
peak memory with and without gradient checkpointing; on CUDA, AMP vs fp32 and accumulation on vs
off; and the loop's achieved LSTM FLOP/s against a matmul measured in the same run.
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
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zimdb.artifacts import read_encoded, read_vocab
from zimdb.batching import Encoded, batch_indices
from zimdb.device import CPU_PEAK
from zimdb.inference import logits
from zimdb.model import ModelConfig, SentimentLSTM
from zimdb.training import Stepper

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/aclImdb_v1_labeled.tar.gz"
DATA_STAGES = ["download", "clean", "vocab", "encode"]
BATCH, ACCUM = 64, 4


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
        subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=work, check=True, capture_output=True
        )
        times[stage] = time.perf_counter() - start
    return times


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of square matmuls measured now: the ceiling a training loop is compared with."""
    size = 4096 if device.type == "cuda" else 1024  # big enough to keep a GPU busy per launch
    a = torch.rand(size, size, device=device).to(dtype)
    b = torch.rand(size, size, device=device).to(dtype)
    a @ b  # warm-up: kernel selection and thread pool start
    n, start = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * n / elapsed


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
    model = OriginalModel(10000)
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
    model = OriginalModel(10000).eval()
    it, seen = iter(loader), 0
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(batches):
            ids, y = next(it)
            model(ids)
            seen += len(y)
    return seen / (time.perf_counter() - start)


def project_train(train: Encoded, steps: int, checkpointing=False, autocast=None, accum=ACCUM):
    """Samples/s, tokens/s of the train stage's loop (bucketed batches, Stepper) over `steps`."""
    torch.manual_seed(0)
    device = train.ids.device
    model = SentimentLSTM(ModelConfig(10000)).to(device)
    model.grad_checkpointing = checkpointing
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stepper = Stepper(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
        torch.amp.GradScaler("cuda", enabled=autocast is not None),
        autocast or nullcontext(),
        1.0,
    )
    batches = batch_indices(train.lengths_np, BATCH, np.random.default_rng(0))[:steps]
    seen = tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(batches), accum):
        micro = train.batches(batches[i : i + accum])
        stepper.step(micro)
        seen += sum(len(y) for _, _, y in micro)
        tokens += sum(ids.numel() for ids, _, _ in micro)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seen / seconds, tokens / seconds


def lstm_kernel(train: Encoded, steps: int) -> float:
    """Samples/s of nn.LSTM's forward and backward alone on random inputs of the loop's batch
    shapes: no embedding, head, optimizer or data work. The loop cannot beat this."""
    torch.manual_seed(0)
    device = train.ids.device
    lstm = nn.LSTM(128, 256, batch_first=True).to(device)
    batches = batch_indices(train.lengths_np, BATCH, np.random.default_rng(0))[:steps]
    inputs = [
        torch.randn(len(b), int(train.lengths_np[b].max()), 128, device=device) for b in batches
    ]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x in inputs:
        out, _ = lstm(x)
        out[:, -1].sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def lstm_shaped_matmul_flops(device: torch.device, steps: int, seconds: float = 0.5) -> float:
    """FLOP/s of the LSTM's own matmuls for a batch of 64 reviews of `steps` tokens: the input
    projection of all steps [64*steps, 128] x [128, 1024], then `steps` recurrent
    [64, 256] x [256, 1024], in the proportion the LSTM does them."""
    x, w_ih = torch.randn(64 * steps, 128, device=device), torch.randn(128, 1024, device=device)
    h, w_hh = torch.randn(64, 256, device=device), torch.randn(256, 1024, device=device)
    x @ w_ih, h @ w_hh
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x @ w_ih
        for _ in range(steps):
            h @ w_hh
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n * 2 * 64 * steps * 1024 * (128 + 256) / (time.perf_counter() - start)


def project_eval(data: Encoded) -> float:
    model = SentimentLSTM(ModelConfig(10000)).to(data.ids.device)
    start = time.perf_counter()
    logits(model, data, 256, nullcontext())
    return len(data) / (time.perf_counter() - start)


def peak_rss_mb(checkpointing: bool, encoded: Path, steps: int) -> tuple[float, float]:
    """RSS of a fresh process with the data loaded, and its peak over `steps` train micro-batches
    of the longest reviews (full 250-token batches: the step that sets a run's peak).

    Read from /proc (VmRSS, VmHWM after resetting it through clear_refs), not getrusage: Linux
    carries ru_maxrss across exec, so a child would start at this process's own peak.
    """
    code = (
        "import re, torch; from benchmarks.run import *; "
        "mib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())"
        "[1]) / 1024; "
        f"t = Encoded.from_records(read_encoded('{encoded}', 10000), torch.device('cpu')); "
        "t = t.subset(np.argsort(t.lengths_np)[-8 * BATCH:]); "
        "open('/proc/self/clear_refs', 'w').write('5'); "
        "print(mib('VmRSS')); "
        f"project_train(t, {steps}, checkpointing={checkpointing}, accum=1); "
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


def predict_speed(work: Path) -> tuple[float, float] | None:
    """Seconds to the first prediction, and reviews/s over the 25,000 test reviews, using the
    project's trained model (None when data/model.pt does not exist yet)."""
    if not (ROOT / "data/model.pt").exists():
        return None
    cmd = [sys.executable, "-m", "zimdb.predict"]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--steps", type=int, default=48, help="micro-batches timed per loop")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}, device {device}"
    )

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
        word_to_id = {w: i for i, w in enumerate(vocab)}
        original = OriginalDataset(raw.text.tolist(), raw.label.tolist(), word_to_id, 250)
        shuffled = DataLoader(original, batch_size=BATCH, shuffle=True)
        test = Encoded.from_records(
            read_encoded(work / "data/encoded/test.npy", len(vocab)), device
        )

        print(f"\n(b) training, {args.steps} micro-batches of {BATCH}, accumulation {ACCUM}")
        ref = reference_train(shuffled, args.steps)
        # The host's speed drifts within a run: (e) compares the loop with the faster of two
        # matmul readings taken right before and right after it, never with one from a slow spell.
        before = matmul_flops(device, torch.float32)
        ours, tokens_per_s = project_train(train, args.steps)
        after = matmul_flops(device, torch.float32)
        peak = max(before, after)
        n = len(train)
        print(f"  reference loop  {ref:7.0f} samples/s  (epoch of {n:,}: {n / ref:5.0f} s)")
        print(f"  project loop    {ours:7.0f} samples/s  (epoch of {n:,}: {n / ours:5.0f} s)")
        print(f"  ratio           {ours / ref:7.2f} x")
        kernel = lstm_kernel(train, args.steps)
        print(
            f"  nn.LSTM forward+backward alone at the project loop's batch shapes: {kernel:.0f} "
            f"samples/s; the loop runs at {ours / kernel:.0%} of it"
        )
        eval_batches = 20
        ref_eval = reference_eval(DataLoader(original, batch_size=256), eval_batches)
        ours_eval = project_eval(test.subset(np.arange(eval_batches * 256)))
        print(
            f"  evaluation: reference {ref_eval:.0f}/s, project {ours_eval:.0f}/s, ratio {ours_eval / ref_eval:.2f} x"
        )

        achieved = 3 * SentimentLSTM(ModelConfig(10000)).flops_per_token() * tokens_per_s
        print("\n(e) utilisation")
        shaped = lstm_shaped_matmul_flops(device, round(train.lengths_np.mean()))
        print(
            f"  matmul {before / 1e9:.0f} / {after / 1e9:.0f} GFLOP/s before / after the loop; "
            f"LSTM loop {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the faster"
        )
        print(
            f"  zimdb.device.CPU_PEAK, what the train stage reports against: "
            f"{CPU_PEAK / 1e9:.0f} GFLOP/s"
        )
        print(
            f"  the LSTM's own matmul shapes alone: {shaped / 1e9:.0f} GFLOP/s = {shaped / peak:.0%} "
            f"of the square matmul; the loop reaches {achieved / shaped:.0%} of that"
        )

        print("\n(c) peak memory")
        if device.type == "cuda":
            for ckpt in (False, True):
                torch.cuda.reset_peak_memory_stats()
                project_train(train, 8, checkpointing=ckpt, accum=1)
                print(
                    f"  checkpointing {ckpt!s:<5}: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                )
        else:
            encoded = work / "data/encoded/train.npy"
            for ckpt in (False, True):
                before, peak = peak_rss_mb(ckpt, encoded, 8)
                print(
                    f"  checkpointing {ckpt!s:<5}: RSS {before:.0f} MiB with the data loaded, "
                    f"peak {peak:.0f} MiB over 8 steps of 64 x 250 tokens: "
                    f"+{peak - before:.0f} MiB for training"
                )

        print("\n(d) CUDA: AMP and accumulation")
        if device.type != "cuda":
            print("  no CUDA device here: not measured")
        else:
            fp16 = torch.autocast("cuda", dtype=torch.float16)
            fp32_rate, _ = project_train(train, args.steps)
            amp_rate, _ = project_train(train, args.steps, autocast=fp16)
            one_rate, _ = project_train(train, args.steps, autocast=fp16, accum=1)
            print(f"  fp32 {fp32_rate:.0f}/s, AMP {amp_rate:.0f}/s: {amp_rate / fp32_rate:.2f} x")
            print(f"  AMP epoch of 25,000: {25000 / amp_rate:.1f} s")
            print(f"  accumulation 4 {amp_rate:.0f}/s vs 1 {one_rate:.0f}/s")
        print("\n(f) dvc repro with nothing to do (small project copy)")
        times = noop_repro(args.archive, work / "noop")
        print("  " + ", ".join(f"{t:.2f} s" for t in times))
        print("\n(g) predict")
        speed = predict_speed(work)
        if speed is None:
            print("  data/model.pt does not exist: run `dvc repro` first")
        else:
            print(
                f"  start to first prediction {speed[0]:.1f} s; 25,000 reviews from a file: {speed[1]:.0f} reviews/s"
            )
    print(
        f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
