"""Benchmarks on the real data: `uv run python -m benchmarks.run [--archive PATH] [--steps N]`.

Prints measured figures only: data stages wall time; the train stage's loop and evaluation, in
each precision this machine runs natively, next to a reference loop written the original way (a
Dataset that cleans and tokenises in __getitem__, every batch padded to max_len, a default
DataLoader), as ratios from the same run; the loop with glibc's allocator as it comes and as
the stage prepares it; the original configuration (forget_bias 0) with and without flushing
denormals; peak memory with and without gradient checkpointing; and the loop's achieved LSTM
FLOP/s against a matmul in the same precision measured in the same run. The run is the train
stage's own (zimdb.training.run) on params.yaml's train section; the CUDA checks are
benchmarks/gpu.py.
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
from zimdb.data.artifacts import open_encoded
from zimdb.data.encoding import Encoding, read_encoding
from zimdb.model.batches import Encoded
from zimdb.model.device import matmul_flops, prepare
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.model.precision import for_training, native_bf16
from zimdb.params import Train
from zimdb.paths import CLEAN, ENCODED, ENCODING, MODEL, RAW
from zimdb.training.run import Run, assemble, train_windows, windows

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
    """Same size as the project's model; reads the final hidden state, after the padding."""

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


def stage_run(p: Train, train: Encoded, encoding: Encoding, precision: str) -> Run:
    """The train stage's run of params `p` on `train`, in `precision` (auto, fp32, bf16, ...)."""
    return assemble(p, train, encoding, for_training(precision, train.device, "precision"))


def time_loop(run: Run, train: Encoded, steps: int) -> tuple[float, float]:
    """Samples/s and tokens/s of the train stage's loop over its first windows holding `steps`
    micro-batches (a random epoch order, as the stage draws it)."""
    mine = windows(run, train, np.random.default_rng(0))[: max(steps // run.p.grad_accum_steps, 1)]
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    _, _, samples, tokens = train_windows(run, train, mine, 1).tolist()
    seconds = time.perf_counter() - start
    return samples / seconds, tokens / seconds


def lstm_kernel(run: Run, train: Encoded, steps: int) -> float:
    """Samples/s of nn.LSTM's forward and backward alone on random inputs of the shapes of the
    batches time_loop times: no embedding, head, optimizer or data work. The loop cannot beat
    this."""
    torch.manual_seed(0)
    p, device, dtype = run.p, run.device, run.precision.dtype
    lstm = nn.LSTM(p.embedding_dim, p.hidden_dim, batch_first=True).to(device)
    mine = windows(run, train, np.random.default_rng(0))[: max(steps // p.grad_accum_steps, 1)]
    widths = [train.width(idx) for window in mine for idx in window.rows]
    inputs = [torch.randn(p.batch_size, w, p.embedding_dim, device=device) for w in widths]
    start = time.perf_counter()
    for x in inputs:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out, _ = lstm(x)
        out[:, -1].float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return p.batch_size * len(inputs) / (time.perf_counter() - start)


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


def eval_speed(run: Run, data: Encoded) -> float:
    """Reviews/s of the stage's scoring (zimdb.model.inference.logits) with the run's model."""
    start = time.perf_counter()
    logits(run.model, data, 256, run.stepper.autocast)
    return len(data) / (time.perf_counter() - start)


def child(code: str) -> list[str]:
    """`code` run in a fresh process of this environment; its stdout's words."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return out.stdout.split()


def allocator(encoded: Path, steps: int, as_prepared: bool) -> tuple[float, float]:
    """Samples/s of the stage's loop and minor page faults per second, in a fresh process whose
    CPU is prepared as the stage prepares it, or with glibc's allocator as it comes (denormals
    flushed either way)."""
    setup = "prepare(cpu)" if as_prepared else "torch.set_flush_denormal(True)"
    code = (
        "import resource, time, torch; from benchmarks.run import *; cpu = torch.device('cpu'); "
        f"{setup}; t, w = load_split('{encoded}', 'train', cpu); "
        "run = stage_run(train_params(), t, w, 'auto'); time_loop(run, t, 4); "
        "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; s = time.perf_counter(); "
        f"rate, _ = time_loop(run, t, {steps}); "
        "print(rate, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / "
        "(time.perf_counter() - s))"
    )
    rate, faults = child(code)
    return float(rate), float(faults)


def peak_rss_mb(checkpointing: bool, encoded: Path, steps: int) -> tuple[float, float]:
    """RSS of a fresh process with the data loaded, and its peak over `steps` train micro-batches
    of the longest reviews (full-width batches: the step that sets a run's peak), in the
    precision train.precision gives here.

    Read from /proc (VmRSS, VmHWM after resetting it through clear_refs), not getrusage: Linux
    carries ru_maxrss across exec, so a child would start at this process's own peak.
    """
    code = (
        "import re, torch; from benchmarks.run import *; cpu = torch.device('cpu'); "
        "mib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())"
        "[1]) / 1024; prepare(cpu); "
        f"p = train_params(grad_accum_steps=1, grad_checkpointing={checkpointing}); "
        f"t, w = load_split('{encoded}', 'train', cpu); "
        "t = t.subset(np.argsort(t.lengths)[-8 * p.batch_size:]); "
        "run = stage_run(p, t, w, 'auto'); "
        "open('/proc/self/clear_refs', 'w').write('5'); print(mib('VmRSS')); "
        f"time_loop(run, t, {steps}); print(mib('VmHWM'))"
    )
    before, peak = (float(v) for v in child(code)[-2:])
    return before, peak


def load_split(encoded: Path | str, split: str, device) -> tuple[Encoded, Encoding]:
    """An encoded split of the folder `encoded` on `device`, and its Encoding."""
    encoding = read_encoding(Path(encoded) / ENCODING.name)
    size, width = len(encoding.vocab), encoding.max_len
    records = open_encoded(Path(encoded) / f"{split}.npy", size, width)
    return Encoded.from_records(records, device), encoding


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
    ModelFile(file.model, file.encoding, precision).save(model)
    cmd = [sys.executable, "-m", "zimdb.predict", "--model", str(model)]
    start = time.perf_counter()
    subprocess.run([*cmd, "A wonderful film."], cwd=ROOT, check=True, capture_output=True)
    first = time.perf_counter() - start
    reviews = pd.read_parquet(work / RAW / "test.parquet")[["text"]]
    reviews.to_parquet(work / "reviews.parquet")
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "--file", str(work / "reviews.parquet"), "--output", str(work / "out.csv")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return first, len(reviews) / (time.perf_counter() - start)


def precisions(device: torch.device) -> list[str]:
    """fp32, and every lower precision this device runs natively."""
    names = ["fp32"] + (["fp16"] if device.type == "cuda" else [])
    return names + (["bf16"] if native_bf16(device) else [])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--steps", type=int, default=48, help="micro-batches timed per loop")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = native_bf16(device)
    caps = {
        k: os.environ[k]
        for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
        if k in os.environ
    }
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} CPU threads, torch "
        f"{torch.__version__}, device {device}, native bf16: {bf16 or 'none'}"
        + (f"; capped: {caps}" if caps else "")
    )
    prepare(device)  # as the train stage does; (b') turns the flush off and on again
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

        encoded = work / ENCODED
        train, encoding = load_split(encoded, "train", device)
        test, _ = load_split(encoded, "test", device)
        vocab = encoding.vocab
        raw = pd.read_parquet(work / CLEAN / "train.parquet")  # same reviews, original loader
        word_to_id = {w: i for i, w in enumerate(vocab[:ORIGINAL_VOCAB])}
        original = OriginalDataset(raw.text.tolist(), raw.label.tolist(), word_to_id, 250)
        shuffled = DataLoader(original, batch_size=BATCH, shuffle=True)
        n = len(train)

        print(
            f"\n(b) training, {args.steps} micro-batches: the reference (batch {BATCH}, "
            f"accumulation {ACCUM}, fp32) against the train stage's loop (params.yaml: batch "
            f"{p.batch_size}, accumulation {p.grad_accum_steps})"
        )
        ref = reference_train(shuffled, args.steps)
        print(f"  reference loop       {ref:7.0f} samples/s  (epoch of {n:,}: {n / ref:5.0f} s)")
        rates, peaks, stage_runs = {}, {}, {}
        for name in runs:
            stage_runs[name] = run = stage_run(p, train, encoding, name)
            # The host's speed drifts within a run: (e) compares the loop with the faster of two
            # matmul readings taken right before and right after it, never one from a slow spell.
            before = matmul_flops(device, run.precision.dtype, seconds=0.5)
            time_loop(run, train, 2 * p.grad_accum_steps)  # warm-up: oneDNN's kernels, threads
            rates[name] = time_loop(run, train, args.steps)
            peaks[name] = (before, matmul_flops(device, run.precision.dtype, seconds=0.5))
            ours = rates[name][0]
            print(
                f"  stage's loop, {name}  {ours:7.0f} samples/s  (epoch of {n:,}: "
                f"{n / ours:5.0f} s); {ours / ref:.2f} x the reference"
            )
        for name in runs[1:]:
            print(f"  {name} against fp32: {rates[name][0] / rates['fp32'][0]:.2f} x")
        for name in runs:
            kernel = lstm_kernel(stage_runs[name], train, args.steps)
            print(
                f"  nn.LSTM forward+backward alone, {name}, at the loop's batch shapes: "
                f"{kernel:.0f} samples/s; the loop runs at {rates[name][0] / kernel:.0%} of it"
            )
        eval_batches = 20
        ref_eval = reference_eval(DataLoader(original, batch_size=256), eval_batches)
        subset = test.subset(np.arange(eval_batches * 256))
        print(f"  evaluation: reference {ref_eval:.0f} reviews/s (fp32)")
        evals = {name: eval_speed(stage_runs[name], subset) for name in runs}
        for name, speed in evals.items():
            print(f"  evaluation: stage's, {name} {speed:.0f} reviews/s, {speed / ref_eval:.2f} x")
        for name in runs[1:]:
            print(f"  evaluation, {name} against fp32: {evals[name] / evals['fp32']:.2f} x")

        if device.type == "cpu":
            print(
                "\n(b'') glibc's allocator as it comes, and as the stage prepares it (fresh processes)"
            )
            for prepared in (False, True):
                rate, faults = allocator(encoded, args.steps, prepared)
                label = "prepared (zimdb.model.device.prepare)" if prepared else "as it comes"
                print(f"  {label:<38} {rate:6.0f} samples/s, {faults:9,.0f} minor faults/s")

        print(
            "\n(b') the original configuration (forget_bias 0, dropout 0, accumulation 4, no "
            "clipping), with and without flushing denormals"
        )
        original_params = train_params(**ORIGINAL)
        for name in runs:
            run = stage_run(original_params, train, encoding, name)
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                rate, _ = time_loop(run, train, args.steps)
                print(
                    f"  {name}, denormals {'flushed' if flush else 'kept   '}: {rate:7.0f} samples/s"
                )

        print("\n(e) utilisation: the loop's LSTM FLOP/s against a square matmul, same precision")
        for name in runs:
            run, (before, after) = stage_runs[name], peaks[name]
            achieved = 3 * run.model.flops_per_token() * rates[name][1]
            peak = max(before, after)
            mean_width = round(train.lengths.mean())
            shaped = lstm_shaped_matmul_flops(device, mean_width, p, run.precision.dtype)
            print(
                f"  {name}: matmul {before / 1e9:.0f} / {after / 1e9:.0f} GFLOP/s before / "
                f"after the loop; the loop {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} "
                f"of the faster; the LSTM's own matmul shapes alone {shaped / 1e9:.0f} GFLOP/s = "
                f"{shaped / peak:.0%} of it"
            )

        print("\n(c) peak memory, train.precision as params.yaml sets it")
        if device.type == "cuda":
            print("  on CUDA: benchmarks/gpu.py")
        else:
            for ckpt in (False, True):
                before, peak = peak_rss_mb(ckpt, encoded, 8)
                print(
                    f"  checkpointing {ckpt!s:<5}: RSS {before:.0f} MiB with the data loaded, "
                    f"peak {peak:.0f} MiB over 8 steps of {p.batch_size} full-width reviews: "
                    f"+{peak - before:.0f} MiB for training"
                )

        print("\n(f) dvc repro with nothing to do (small project copy)")
        times = noop_repro(args.archive, work / "noop")
        print("  " + ", ".join(f"{t:.2f} s" for t in times))
        print("\n(g) predict: data/model.pt's weights, saved as trained in each precision")
        speeds = {name: predict_speed(work, name) for name in runs}
        for name, speed in speeds.items():
            if speed is None:
                print("  data/model.pt does not exist: run `dvc repro` first")
                break
            print(
                f"  {name}: start to first prediction {speed[0]:.1f} s; 25,000 reviews from a "
                f"file: {speed[1]:.0f} reviews/s ({speed[1] / speeds['fp32'][1]:.2f} x fp32)"
            )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak_rss:.0f} MiB")


def cpu_name() -> str:
    """The CPU's model name and what torch's kernels use of it (every figure names the CPU it
    ran on)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        name = "unknown CPU"
    flags = [k for k in ("amx_bf16", "avx512_bf16") if torch.cpu.get_capabilities().get(k)]
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}; {', '.join(flags) or 'no bf16'})"


if __name__ == "__main__":
    main()
