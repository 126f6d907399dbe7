"""Serving benchmark: `uv run python -m benchmarks.serve [--model PATH] [--reviews FILE]`.

Starts `python -m zimdb.serve` on a free port of 127.0.0.1, stops it at the end, and prints
measured figures only: the latency (p50, p99) of one 250-word review over HTTP, one request at a
time; the throughput of 1 and of 16 concurrent clients sending one review per request, and of
16 sending 16, as a ratio to scoring the same reviews offline (LSTMScorer.probabilities on
all of them at once, in this process, at predict's batch size and at the server's, each timed
before and after the served runs: the fastest of these readings counts); and the server
process's resident memory.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zimdb.data import table, text
from zimdb.errors import run
from zimdb.paths import MODEL, RAW
from zimdb.predict import BATCH_SIZE, read_texts
from zimdb.scoring.lstm import LSTMScorer

HEADERS = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, threads: int | None, batch_size: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    options = ["--model", str(model), "--port", str(port), "--batch-size", str(batch_size)]
    if threads:
        options += ["--threads", str(threads)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zimdb.serve", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start: try `uv run python -m zimdb.serve --model {model}`")


def post(conn: HTTPConnection, path: str, payload: dict) -> dict:
    conn.request("POST", path, json.dumps(payload), HEADERS)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"{path} answered {response.status}: {body[:200]!r}")
    return json.loads(body)


def latencies(port: int, path: str, payload: dict, requests: int) -> np.ndarray:
    """Seconds per request, one at a time on one connection, after a few to warm up."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(5):
        post(conn, path, payload)
    times = np.empty(requests)
    for i in range(requests):
        start = time.perf_counter()
        post(conn, path, payload)
        times[i] = time.perf_counter() - start
    return times


def served(
    port: int, reviews: list[str], clients: int, per_request: int
) -> tuple[float, np.ndarray]:
    """Seconds for `clients` connections to score all reviews, `per_request` at a time, each
    client sending its next request as soon as it has its answer; and the probabilities."""
    out = np.empty(len(reviews))
    todo = iter(range(0, len(reviews), per_request))
    lock = threading.Lock()

    def client() -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            texts = reviews[i : i + per_request]
            got = post(conn, "/predict", {"texts": texts})["predictions"]
            out[i : i + len(texts)] = [p["probability"] for p in got]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - start, out


def offline(
    trained: LSTMScorer, reviews: list[str], batch_size: int = BATCH_SIZE
) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    probabilities = trained.probabilities(pd.Series(reviews, dtype=object), batch_size)
    return time.perf_counter() - start, probabilities


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}


CASES = [(1, 1), (16, 1), (16, 16)]  # (concurrent clients, reviews per request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL, help=f"default {MODEL}")
    parser.add_argument(
        "--reviews", type=Path, default=RAW / "test.parquet", help="a predict --file input"
    )
    parser.add_argument("--n", type=int, default=1024, help="reviews per throughput run")
    parser.add_argument("--requests", type=int, default=200, help="latency samples")
    parser.add_argument("--threads", type=int, help="the server's --threads")
    parser.add_argument("--batch-size", type=int, default=16, help="the server's --batch-size")
    args = parser.parse_args()

    trained = LSTMScorer.load(args.model)
    pool = (
        read_texts(args.reviews, table.Columns(label=None)).sample(frac=1, random_state=0).tolist()
    )
    reviews = (pool * (args.n // len(pool) + 1))[: args.n]
    # One real review cut to its first 250 words: cleaned already, so the model reads all 250.
    cleaned = text.clean(pd.Series(pool, dtype=object)).str.split()
    long = next((words for words in cleaned if len(words) >= 250), None)
    if long is None:
        sys.exit(f"{args.reviews}: no review of 250 words or more")
    review = " ".join(long[:250])

    config = trained.file.model.config
    print(
        f"model {args.model}: hidden {config.hidden_dim}, embedding {config.embedding_dim}, "
        f"vocab {config.vocab_size}, max_len {trained.file.encoding.max_len}; {len(reviews)} reviews of "
        f"{args.reviews} (mean {np.mean([len(w) for w in cleaned]):.0f} words); "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"server --batch-size {args.batch_size} --threads {args.threads or 'default'}"
    )
    sizes = sorted({BATCH_SIZE, args.batch_size})  # predict's default, and the server's
    readings = {size: [offline(trained, reviews, size)[0]] for size in sizes}
    reference = offline(trained, reviews)[1]

    proc, port = start_server(args.model, args.threads, args.batch_size)
    try:
        for path, payload in (("/predict", {"texts": [review]}), ("/explain", {"text": review})):
            ms = latencies(port, path, payload, args.requests) * 1000
            print(
                f"latency {path}, one 250-word review, {args.requests} requests in turn: "
                f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"
            )
        rates = {}
        for clients, per_request in CASES:
            seconds, got = served(port, reviews, clients, per_request)
            if not np.allclose(got, reference, atol=1e-6):
                sys.exit(f"{clients} clients got other probabilities than offline scoring")
            rates[clients, per_request] = len(reviews) / seconds
        used = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    for size in sizes:
        readings[size].append(offline(trained, reviews, size)[0])
        before, after = (len(reviews) / s for s in readings[size])
        print(
            f"offline LSTMScorer.probabilities(all {len(reviews)}, batch_size={size}): "
            f"{before:.0f} and {after:.0f} reviews/s (before and after the served runs)"
        )
    best = len(reviews) / min(min(r) for r in readings.values())
    for (clients, per_request), rate in rates.items():
        print(
            f"served, {clients:2d} client{'s' if clients > 1 else ' '} x {per_request:2d} "
            f"review{'s' if per_request > 1 else ' '} per request: {rate:.0f} reviews/s = "
            f"{rate / best:.2f} of offline (its fastest reading, {best:.0f} reviews/s)"
        )
    print(f"server memory: RSS {used['VmRSS']} MiB after the runs, peak {used['VmHWM']} MiB")


if __name__ == "__main__":
    run(main)
