"""Serve the trained model over HTTP: `uv run python -m zimdb.serve [--model PATH] [--port N]`.

POST /predict scores reviews as predict and evaluate do; POST /explain gives one review's words
as the model read them with its verdict after each word, which the page at / draws; GET /health
answers probes; /docs is the OpenAPI page. The model is loaded once, and one thread runs it:
requests that arrive while it is busy are scored together in the next batch.
"""

import argparse
import sys
from pathlib import Path

import torch
import uvicorn

from zimdb.errors import run
from zimdb.model.device import resolve
from zimdb.paths import MODEL
from zimdb.scoring import files
from zimdb.serve.app import create_app
from zimdb.serve.worker import BATCH_SIZE, ModelWorker


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
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    device = resolve(args.device, "--device")
    batch_size = args.batch_size or BATCH_SIZE[device.type]
    worker = ModelWorker(lambda: files.load(args.model, device), batch_size)
    print(
        f"serving {args.model} ({worker.trained.describe()}) on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(create_app(worker), host=args.host, port=args.port)


if __name__ == "__main__":
    run(main)
