"""How the pipeline's cost grows with the data: `uv run python -m benchmarks.scale`.

Writes k× IMDB corpora as table-source files (benchmarks/corpus.py: the archive's reviews
remixed, with new words coming in as a larger corpus brings them) and runs the stages on them as
the pipeline does, each its own process under a memory cap: wall time, time per review and peak
memory (VmHWM, read by the process itself as it exits) of each.

- download, clean, vocab and encode at every size (1×, 8× and 80×: 4 million reviews), and
  download again from the corpus in each of --formats (CSV, TSV, JSON Lines, each also
  gzip-compressed, and a folder of Parquet parts);
- training at every size through the train stage's own functions: its set-up (the data mapped,
  checked and the run assembled, then an epoch's order) timed apart from --steps optimizer
  steps; anonymous and file-backed memory after them, and again after one full pass over the
  epoch's batches, beside the encoded split's size on disk;
- evaluate and the baseline at the sizes of --scored (1× and 8×), on the model of those steps;
- the whole pipeline at --whole (8×) end to end: `dvc exp run -S train.epochs=1` on the corpus.

Its time budget on a 2-core CPU: about 12 minutes for 1× and 8× alone, 30 to 45 minutes with 80×
(31 on a 2-core AMD EPYC with AVX512-BF16), and 40 GB of disk at 80× (corpora and outputs are deleted as each size is done; --work DIR keeps
them in DIR). A smaller form: `--sizes 1,8 --whole 0`, or `--sizes 0.2,1.6 --scored 0.2,1.6
--whole 0` (minutes).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/aclImdb_v1_labeled.tar.gz"
DATA_STAGES = ["download", "clean", "vocab", "encode"]
# Run as `python -c WRAPPER FILE module [args]`: the module as its __main__, then, at exit, its
# /proc/self/status into FILE. VmHWM there is this process's own peak: getrusage's ru_maxrss of
# a child would also count the parent's memory at the fork.
WRAPPER = (
    "import atexit, pathlib, runpy, sys; out, module = sys.argv[1:3]; "
    "atexit.register(lambda: pathlib.Path(out).write_text(open('/proc/self/status').read())); "
    "sys.argv = [module, *sys.argv[3:]]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


@dataclass
class Measured:
    seconds: float
    status: dict[str, int]  # /proc/self/status at exit, in bytes: VmHWM, RssAnon, RssFile, ...
    stdout: str

    @property
    def peak(self) -> int:
        return self.status["VmHWM"]


def measure(module: str, work: Path, *args: str, cap: int | None = None) -> Measured:
    """`python -m module args` in `work` with this project's code, under an address-space cap
    of `cap` bytes (what `prlimit --as` sets); a failure ends the benchmark with its last line."""
    status = work / f".{module}.status"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(status), module, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"benchmark: {module} failed in {work} (exit {done.returncode}): {last}")
    fields = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[key] = int(value.split()[0]) * 1024
    return Measured(seconds, fields, done.stdout)


def probe_train(steps: int) -> None:
    """Run in a project folder with encoded data: the train stage's set-up (its start(): the
    splits mapped and checked, the run assembled), an epoch's order, `steps` optimizer steps
    after 10 of warm-up, then one full pass gathering every batch of the epoch; one JSON line.
    Saves the model those steps made, for evaluate to score."""
    import numpy as np

    from zimdb import params
    from zimdb.model.file import ModelFile
    from zimdb.paths import ENCODED, MODEL
    from zimdb.training import run as training

    def memory() -> dict[str, int]:
        status = Path("/proc/self/status").read_text().splitlines()
        return {
            key: int(value.split()[0]) * 1024
            for key, _, value in (line.partition(":") for line in status)
            if key in ("RssAnon", "RssFile", "VmHWM")
        }

    p = params.load("train")
    start = time.perf_counter()
    run, train, _, encoding = training.start(p)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    mine = training.windows(run, train, np.random.default_rng(p.seed))
    order = time.perf_counter() - start
    training.train_windows(run, train, mine[:10], 1)
    timed = mine[10 : 10 + steps]
    start = time.perf_counter()
    samples = training.train_windows(run, train, timed, 1)[2].item()
    seconds = time.perf_counter() - start
    after_steps = memory()
    start = time.perf_counter()
    for window in mine:
        train.batches(window.rows)
    full_pass = time.perf_counter() - start
    ModelFile(run.model, encoding, run.precision.name).save(MODEL)
    report = {
        "reviews": len(train),
        "setup_s": setup,
        "order_s": order,
        "steps": len(timed),
        "samples_per_s": samples / seconds,
        "after_steps": after_steps,
        "full_pass_s": full_pass,
        "after_pass": memory(),
        "encoded_bytes": (ENCODED / "train.npy").stat().st_size,
        "precision": run.precision.name,
    }
    print(json.dumps(report))


def project(folder: Path, files: dict[str, Path], **overrides) -> Path:
    """A folder to run the stages in: params.yaml's defaults reading the corpus `files`."""
    from benchmarks import corpus

    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(
        source="table",
        train=str(files["train"]),
        test=str(files["test"]),
        labels=list(corpus.LABELS),
    )
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def whole_run(folder: Path, files: dict[str, Path]) -> tuple[float, str]:
    """`dvc exp run` of the whole default pipeline, one epoch, in a git + DVC copy of the project
    reading the corpus; its wall time and evaluate's test metrics."""
    from benchmarks import corpus

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *cmd], cwd=folder, check=True)
    for key, value in (("user.name", "benchmark"), ("user.email", "benchmark@localhost")):
        subprocess.run(["git", "config", key, value], cwd=folder, check=True)
    sets = {
        "download.source": "table",
        "download.train": files["train"],
        "download.test": files["test"],
        "download.labels": json.dumps(list(corpus.LABELS)),
        "train.epochs": 1,
    }
    cmd = [sys.executable, "-m", "dvc", "exp", "run"]
    cmd += [arg for key, value in sets.items() for arg in ("-S", f"{key}={value}")]
    env = dict(
        os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    )
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"benchmark: dvc exp run failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return seconds, (folder / "dvclive/evaluate/metrics.json").read_text()


def reviews_read(stage: str, k: float) -> int:
    """The reviews a stage reads at k× IMDB (25,000 a split, val a tenth of train)."""
    split = round(k * 25_000)
    return {"vocab": round(0.9 * split), "evaluate": split}.get(stage, 2 * split)


def cpu_name() -> str:
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    caps = torch.cpu.get_capabilities()
    bf16 = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    return f"{model}, {os.cpu_count()} cores, {', '.join(bf16) or 'no bf16'}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def report(sizes: list[float], stages: dict, trains: dict, words: dict) -> None:
    print(
        "\n| stage | "
        + " | ".join(f"{k:g}× s" for k in sizes)
        + " | "
        + " | ".join(f"{k:g}× µs/review" for k in sizes)
        + " | "
        + " | ".join(f"{k:g}× peak GiB" for k in sizes)
        + " |"
    )
    print("|---" * (1 + 3 * len(sizes)) + "|")
    for stage, by_size in stages.items():
        present = [k for k in sizes if k in by_size]
        cells = [f"{by_size[k].seconds:.1f}" if k in by_size else "" for k in sizes]
        cells += [
            f"{1e6 * by_size[k].seconds / reviews_read(stage, k):.0f}" if k in by_size else ""
            for k in sizes
        ]
        cells += [gib(by_size[k].peak) if k in by_size else "" for k in sizes]
        print(f"| {stage} | " + " | ".join(cells) + " |")
        if len(present) >= 3:
            a, b, c = present[:3]
            first = (by_size[b].seconds - by_size[a].seconds) / (
                reviews_read(stage, b) - reviews_read(stage, a)
            )
            then = (by_size[c].seconds - by_size[b].seconds) / (
                reviews_read(stage, c) - reviews_read(stage, b)
            )
            ok = then <= 1.25 * first and by_size[c].peak <= 2 * 2**30
            print(
                f"|   added per review {a:g}→{b:g}× {1e6 * first:.1f} µs, {b:g}→{c:g}× {1e6 * then:.1f} µs: "
                f"{then / first:.2f}×; peak at {c:g}× {gib(by_size[c].peak)} GiB -> {'ok' if ok else 'MISSED'} |"
            )
        elif len(present) == 2:
            a, b = present
            per = [by_size[k].seconds / reviews_read(stage, k) for k in (a, b)]
            ok = per[1] <= 1.25 * per[0] and by_size[b].peak <= 1.5 * by_size[a].peak
            print(
                f"|   per review {b:g}× / {a:g}×: {per[1] / per[0]:.2f}; peak {by_size[b].peak / by_size[a].peak:.2f}× -> {'ok' if ok else 'MISSED'} |"
            )
    print(
        "\ndistinct words in train: "
        + ", ".join(f"{k:g}× {words[k]:,}" for k in sizes if k in words)
    )
    print("\n| training | " + " | ".join(f"{k:g}×" for k in sizes) + " |")
    print("|---" * (1 + len(sizes)) + "|")
    rows = {
        "train reviews": lambda t: f"{t['reviews']:,}",
        "set-up: start() (map, check, assemble), s": lambda t: f"{t['setup_s']:.2f}",
        "an epoch's order, s": lambda t: f"{t['order_s']:.2f}",
        "samples/s over the timed steps": lambda t: (
            f"{t['samples_per_s']:.0f} ({t['steps']} steps, {t['precision']})"
        ),
        "RssAnon after the steps, GiB": lambda t: gib(t["after_steps"]["RssAnon"]),
        "RssFile after the steps, GiB": lambda t: gib(t["after_steps"]["RssFile"]),
        "one full pass over the epoch's batches, s": lambda t: f"{t['full_pass_s']:.1f}",
        "RssAnon after the full pass, GiB": lambda t: gib(t["after_pass"]["RssAnon"]),
        "RssFile after the full pass, GiB": lambda t: gib(t["after_pass"]["RssFile"]),
        "train.npy on disk, GiB": lambda t: gib(t["encoded_bytes"]),
    }
    for name, cell in rows.items():
        print(
            f"| {name} | "
            + " | ".join(cell(trains[k]) if k in trains else "" for k in sizes)
            + " |"
        )
    if len(trains) >= 2:
        low, high = min(trains), max(trains)
        speed = trains[high]["samples_per_s"] / trains[low]["samples_per_s"]
        anon = trains[high]["after_pass"]["RssAnon"] - trains[low]["after_pass"]["RssAnon"]
        ok = speed >= 0.9 and anon <= 2**30
        print(
            f"\ntraining at {high:g}× against {low:g}×: samples/s {speed:.2f}×, RssAnon after a full pass "
            f"{anon / 2**30:+.2f} GiB -> {'ok' if ok else 'MISSED'}"
        )


def main() -> None:
    from benchmarks import corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--sizes", default="1,8,80", help="corpus sizes, in IMDBs (50,000 reviews)")
    parser.add_argument("--scored", default="1,8", help="sizes to run evaluate and the baseline at")
    parser.add_argument("--whole", type=float, default=8, help="size of the whole run (0: none)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps timed per size")
    parser.add_argument(
        "--formats",
        default=",".join(corpus.FORMATS),
        help="formats download reads the corpus in too, at every size ('' for none)",
    )
    parser.add_argument(
        "--work", type=Path, help="keep corpora and outputs here (default: deleted)"
    )
    parser.add_argument("--cap-gib", type=float, default=16, help="address space per process")
    parser.add_argument("--probe-train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_train:
        return probe_train(args.steps)

    sizes = [float(k) for k in args.sizes.split(",")]
    formats = [f for f in args.formats.split(",") if f]
    scored = {float(k) for k in args.scored.split(",") if k}
    cap = int(args.cap_gib * 2**30)
    print(
        f"CPU: {cpu_name()}; Python {platform.python_version()}; cap {args.cap_gib:g} GiB a process"
    )
    stages: dict[str, dict[float, Measured]] = {
        s: {} for s in [*DATA_STAGES, "evaluate", "baseline"]
    }
    trains, words = {}, {}
    base = args.work or Path(
        tempfile.mkdtemp(
            prefix="zimdb-scale-", dir=ROOT / "data" if (ROOT / "data").is_dir() else None
        )
    )
    for k in sorted(set(sizes) | ({args.whole} - {0})):
        folder = base / f"{k:g}x"
        start = time.perf_counter()
        files = corpus.write(args.archive, k, folder / "corpus")
        print(f"\n{k:g}×: corpus written in {time.perf_counter() - start:.0f} s", flush=True)
        work = project(folder / "project", files)
        if k in sizes:
            for stage in DATA_STAGES:
                stages[stage][k] = measured = measure(f"stages.{stage}", work, cap=cap)
                print(
                    f"  {stage}: {measured.seconds:.1f} s, peak {gib(measured.peak)} GiB",
                    flush=True,
                )
            words[k] = int(stages["vocab"][k].stdout.split("; ")[1].split()[0])
            for kind in formats:
                start = time.perf_counter()
                other = corpus.as_format(files, kind, folder / kind)
                written = time.perf_counter() - start
                downloaded = project(folder / f"{kind}-project", other)
                measured = measure("stages.download", downloaded, cap=cap)
                stages.setdefault(f"download {kind}", {})[k] = measured
                print(
                    f"  download {kind} (written in {written:.0f} s): {measured.seconds:.1f} s, "
                    f"peak {gib(measured.peak)} GiB",
                    flush=True,
                )
                shutil.rmtree(folder / kind)
                shutil.rmtree(folder / f"{kind}-project")
            probe = measure(
                "benchmarks.scale", work, "--probe-train", "--steps", str(args.steps), cap=cap
            )
            trains[k] = json.loads(probe.stdout.strip().splitlines()[-1])
            print(f"  train: {trains[k]['samples_per_s']:.0f} samples/s", flush=True)
            if k in scored:
                for stage in ("evaluate", "baseline"):
                    stages[stage][k] = measured = measure(f"stages.{stage}", work, cap=cap)
                    print(
                        f"  {stage}: {measured.seconds:.1f} s, peak {gib(measured.peak)} GiB",
                        flush=True,
                    )
        if k == args.whole:
            seconds, metrics = whole_run(folder / "whole", files)
            print(
                f"\nthe whole pipeline at {k:g}× (train.epochs=1), dvc exp run: {seconds:.0f} s; evaluate: {metrics}"
            )
        if not args.work:
            shutil.rmtree(folder)
    if not args.work:
        shutil.rmtree(base, ignore_errors=True)
    report(sizes, {s: v for s, v in stages.items() if v}, trains, words)


if __name__ == "__main__":
    main()
