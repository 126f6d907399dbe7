"""Serving benchmark: `uv run python -m benchmarks.serve [--model PATH] [--reviews FILE]`.

Starts `python -m zimdb.serve` on a free port of 127.0.0.1, stops it at the end (SIGTERM), and
prints measured figures only: the latency (p50, p99) of one 250-word review over HTTP, one
request at a time; the throughput of 1 and of 16 concurrent clients sending one review per
request, and of 16 sending 16, as a ratio to scoring the same reviews offline
(LSTMScorer.probabilities on all of them at once, in this process, at predict's batch size and
at the server's, each timed before and after the served runs: the fastest of these readings
counts); an overload run; and the server process's resident memory.

The overload run, for --overload seconds: 32 clients send requests of 256 long reviews (the
model reads max_len words of each) back to back, and after a 503 wait as its Retry-After says;
one client sends one short review at a time; a prober asks /health and /ready every 0.5 s, each
on a new connection with a timeout of 1 s, as Kubernetes probes do. Requests sent before the
end are all awaited. It reports each client class's answers, refusals and latency, the heavy
clients' reviews a second against offline scoring of the same reviews, the probes' answers and
the server's memory before, after and at its peak.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPException
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


def in_calls(trained: LSTMScorer, reviews: list[str], call: int, batch_size: int) -> float:
    """Seconds the model takes on `reviews` in calls of `call`, in their order: the most a
    server's calls hold when `call` clients each send one review."""
    start = time.perf_counter()
    for i in range(0, len(reviews), call):
        trained.probabilities(pd.Series(reviews[i : i + call], dtype=object), batch_size)
    return time.perf_counter() - start


HEAVY_CLIENTS, HEAVY_SIZE = 32, 256
PROBE_EVERY = 0.5  # seconds
SHORT = 50  # the light client's reviews have at most this many words


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "none answered"
    p50, p99 = np.percentile(seconds, [50, 99])
    return f"p50 {p50:.2f} s, p99 {p99:.2f} s, slowest {max(seconds):.2f} s"


def overload(
    port: int, pid: int, heavy: list[str], light: list[str], seconds: float
) -> dict[str, list]:
    """The overload run (see the module's docstring): per client class, (status, seconds) of
    each request; per probe, (route, status or the error's name, seconds); memory samples."""
    rng = np.random.default_rng(0)
    bodies = [
        json.dumps({"texts": rng.choice(heavy, HEAVY_SIZE).tolist()}) for _ in range(HEAVY_CLIENTS)
    ]
    got: dict[str, list] = {"heavy": [], "light": [], "probes": [], "rss": []}
    end = time.monotonic() + seconds

    def send(conn: HTTPConnection, body: str) -> tuple[int, float, float]:
        start = time.perf_counter()
        conn.request("POST", "/predict", body, HEADERS)
        response = conn.getresponse()
        answer = response.read()
        took = time.perf_counter() - start
        if response.status not in (200, 503):
            sys.exit(f"/predict answered {response.status} under overload: {answer[:200]!r}")
        return response.status, took, float(response.getheader("Retry-After") or 0)

    def client(kind: str, bodies: list[str]) -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(sys.maxsize):
            if time.monotonic() >= end:
                return
            status, took, retry = send(conn, bodies[i % len(bodies)])
            got[kind].append((status, took))
            time.sleep(min(retry, max(end - time.monotonic(), 0)))

    def probe() -> None:
        while time.monotonic() < end:
            tick = time.monotonic()
            got["rss"].append(memory(pid)["VmRSS"])
            for route in ("/health", "/ready"):
                start = time.perf_counter()
                try:
                    conn = HTTPConnection("127.0.0.1", port, timeout=1)
                    conn.request("GET", route)
                    status = conn.getresponse().status
                    conn.close()
                except (OSError, HTTPException) as e:
                    status = type(e).__name__
                got["probes"].append((route, status, time.perf_counter() - start))
            time.sleep(max(PROBE_EVERY - (time.monotonic() - tick), 0))

    single = [json.dumps({"texts": [review]}) for review in light]
    start = time.monotonic()
    with ThreadPoolExecutor(HEAVY_CLIENTS + 2) as pool:
        futures = [
            pool.submit(client, "heavy", bodies[k:] + bodies[:k]) for k in range(HEAVY_CLIENTS)
        ]
        futures += [pool.submit(client, "light", single), pool.submit(probe)]
        for f in futures:
            f.result()
    got["seconds"] = time.monotonic() - start  # to the last answer
    return got


def report_overload(got: dict[str, list], offline_rate: float) -> None:
    for kind, size in (("heavy", HEAVY_SIZE), ("light", 1)):
        answered = [took for status, took in got[kind] if status == 200]
        refused = [took for status, took in got[kind] if status == 503]
        line = (
            f"  {kind}: {len(answered)} of {len(got[kind])} answered, {len(refused)} refused "
            f"(slowest refusal {max(refused, default=0) * 1000:.0f} ms); answered: "
            f"{percentiles(answered)}"
        )
        if kind == "heavy":
            rate = len(answered) * size / got["seconds"]
            line += f"; {rate:.0f} reviews/s = {rate / offline_rate:.2f} of offline"
        print(line)
    for route in ("/health", "/ready"):
        probes = [(status, took) for r, status, took in got["probes"] if r == route]
        ok = [took for status, took in probes if status == 200]
        other = sorted({str(status) for status, _ in probes if status != 200})
        print(
            f"  {route}: {len(ok)} of {len(probes)} probes 200 ({', '.join(other) or 'no other'}"
            f"), slowest 200 in {max(ok, default=0) * 1000:.1f} ms"
        )
    rss = got["rss"]
    if rss:
        print(f"  server RSS during the run: {rss[0]} MiB at its start, {max(rss)} MiB at most")


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
    parser.add_argument(
        "--overload", type=float, default=60, help="seconds of the overload run (0: none)"
    )
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
    max_len = trained.file.encoding.max_len
    # Long reviews, as many as a body of 1 MiB holds 256 of.
    heavy = [
        r
        for r, words in zip(pool, cleaned, strict=True)
        if len(words) >= max_len and len(json.dumps(r)) + 2 <= (1 << 20) // HEAVY_SIZE - 8
    ]
    light = [r for r, words in zip(pool, cleaned, strict=True) if 0 < len(words) <= SHORT]
    if args.overload and not (heavy and light):
        sys.exit(
            f"{args.reviews}: the overload run needs reviews of {max_len} words or more and "
            f"of {SHORT} or fewer"
        )
    long_reviews = (heavy * (args.n // max(len(heavy), 1) + 1))[: args.n]

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
    clients = max(c for c, per_request in CASES if per_request == 1)
    call_readings = [in_calls(trained, reviews, clients, args.batch_size)]
    # The server's calls, as the heavy clients fill them, score long reviews at its batch size.
    long_readings = [offline(trained, long_reviews, args.batch_size)[0]] if args.overload else []

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
        if args.overload:
            loaded = overload(port, proc.pid, heavy, light, args.overload)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()

    for size in sizes:
        readings[size].append(offline(trained, reviews, size)[0])
        before, after = (len(reviews) / s for s in readings[size])
        print(
            f"offline LSTMScorer.probabilities(all {len(reviews)}, batch_size={size}): "
            f"{before:.0f} and {after:.0f} reviews/s (before and after the served runs)"
        )
    best = len(reviews) / min(min(r) for r in readings.values())
    call_readings.append(in_calls(trained, reviews, clients, args.batch_size))
    rate = len(reviews) / min(call_readings)
    print(
        f"the model alone, in calls of {clients} reviews in turn (the most {clients} clients of "
        f"one review fill): {rate:.0f} reviews/s = {rate / best:.2f} of offline"
    )
    for (clients, per_request), rate in rates.items():
        print(
            f"served, {clients:2d} client{'s' if clients > 1 else ' '} x {per_request:2d} "
            f"review{'s' if per_request > 1 else ' '} per request: {rate:.0f} reviews/s = "
            f"{rate / best:.2f} of offline (its fastest reading, {best:.0f} reviews/s)"
        )
    print(f"server memory: RSS {used['VmRSS']} MiB after the runs, peak {used['VmHWM']} MiB")
    if args.overload:
        long_readings.append(offline(trained, long_reviews, args.batch_size)[0])
        long_rate = len(long_reviews) / min(long_readings)
        print(
            f"overload, {args.overload:g} s: {HEAVY_CLIENTS} clients x {HEAVY_SIZE} reviews of "
            f"{max_len} words or more, 1 client x 1 review of {SHORT} words or fewer; offline on "
            f"{len(long_reviews)} such long reviews at batch_size={args.batch_size}: "
            f"{long_rate:.0f} reviews/s (fastest of before and after)"
        )
        report_overload(loaded, long_rate)
    print(f"server stopped by SIGTERM: exit status {code} after {stopped:.1f} s")


if __name__ == "__main__":
    run(main)
