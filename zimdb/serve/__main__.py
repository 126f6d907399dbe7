"""Serve the trained model over HTTP: `uv run python -m zimdb.serve [--model PATH] [--port N]`.

POST /predict scores reviews as predict and evaluate do; POST /explain gives one review's words
as the model read them with its verdict after each word, which the page at / draws; GET /health
(liveness), GET /ready (readiness) and GET /metrics (Prometheus) serve an orchestrator; /docs is
the OpenAPI page. The model is loaded once, and one thread runs it: the requests waiting take
turns on it, and work beyond --max-queue is refused at once. On SIGTERM the service answers the
requests it took and exits.
"""

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import torch
import uvicorn

from zimdb.errors import run
from zimdb.model.device import resolve
from zimdb.paths import MODEL
from zimdb.scoring import files
from zimdb.serve.app import MAX_WAIT, STUCK_AFTER, create_app, model_identity
from zimdb.serve.worker import BATCH_SIZE, MAX_QUEUE, TURN, ModelWorker

# Seconds the server gives the requests it took to be answered, once told to stop: more than
# --max-wait, after which every one of them has its answer.
GRACE = 20


class Server(uvicorn.Server):
    """uvicorn's server, which makes readiness fail the moment it is told to stop: it then
    closes its port and waits for the requests it took to be answered."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig, frame) -> None:
        self.app.state.draining = True
        super().handle_exit(sig, frame)


def stopped(sig, frame) -> None:
    """SIGTERM once the server has drained: uvicorn raises it again after a graceful shutdown,
    which would end the process by the signal; every request was answered, so exit 0."""
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zimdb.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL,
        help=f"model.pt, or the baseline's .skops (default {MODEL})",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--batch-size", type=int, help="reviews per forward pass (default: 16 on CPU, 256 on CUDA)"
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help="most reviews a request may have to wait for, its own included, before a 503 "
        f"with Retry-After (default: {MAX_QUEUE['cpu']} on CPU, {MAX_QUEUE['cuda']} on CUDA)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=MAX_WAIT,
        help=f"seconds a request waits for the model before a 503 (default {MAX_WAIT})",
    )
    parser.add_argument(
        "--stuck-after",
        type=float,
        default=STUCK_AFTER,
        help="seconds the model thread may spend on one piece of work before /health fails "
        f"(default {STUCK_AFTER})",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE,
        help=f"seconds to answer the requests taken once stopped by SIGTERM (default {GRACE})",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    for option in ("max_queue", "max_wait", "stuck_after", "grace"):
        if (value := getattr(args, option)) is not None and value <= 0:
            parser.error(f"--{option.replace('_', '-')} must be above 0, got {value:g}")
    if args.grace <= args.max_wait:  # else a request taken could be cut off unanswered
        parser.error(f"--grace ({args.grace:g}) must be above --max-wait ({args.max_wait:g})")
    device = resolve(args.device, "--device")
    batch_size = args.batch_size or BATCH_SIZE[device.type]
    max_queue = args.max_queue or MAX_QUEUE[device.type]
    worker = ModelWorker(
        lambda: files.load(args.model, device),
        batch_size,
        turn=TURN[device.type],
        max_queue=max_queue,
    )
    print(
        f"serving {args.model} ({worker.trained.describe()}) on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    app = create_app(
        worker, args.max_wait, args.stuck_after, model_identity(args.model, worker.trained)
    )
    # No line per request: /metrics counts them, and under load the log cost a tenth of the
    # service's time per request (16 clients of one review, a model that takes no time, on a
    # 2-core AMD EPYC: 2,702 -> 3,060 requests/s).
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=args.grace,
        access_log=False,
    )
    server = Server(config, app)
    signal.signal(signal.SIGTERM, stopped)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, raised again after the shutdown
        server.run()
    if not server.started:  # uvicorn has said why, e.g. the port is taken
        sys.exit(uvicorn.config.STARTUP_FAILURE)


if __name__ == "__main__":
    run(main)
