"""Serve the trained model over HTTP: `uv run python -m zimdb.serve [--model PATH] [--port N]`.

POST /predict scores reviews as predict and evaluate do; POST /explain gives one review's words
as the model read them with its verdict after each word, which the page at / draws; GET /health
answers probes; /docs is the OpenAPI page. The model is loaded once, and one thread runs it:
requests that arrive while it is busy are scored together in the next batch.
"""

import argparse
import asyncio
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from zimdb import scorer
from zimdb.device import resolve
from zimdb.errors import one_line, run
from zimdb.explain import read, running_note
from zimdb.paths import MODEL
from zimdb.verdict import labels

MAX_BODY = 1 << 20  # bytes
MAX_TEXTS = 256  # per request
GATHER = MAX_TEXTS  # most reviews scored in one call to the model: one full request
GATHER_WAIT = 0.002  # seconds a request arriving alone waits for others, if the last had company
# Reviews per forward pass: a call sorts what it gathered by length and runs batches of this
# size. On the project's 2-core CPU, 16 ran fastest (256 gathered reviews: 1171 reviews/s at
# 16, 778 at 256, predict's default, which pads more); a GPU wants large batches.
BATCH_SIZE = {"cpu": 16, "cuda": 256}
TIMEOUT = 30  # seconds a request waits for the model before a 503
HEALTH_TIMEOUT = 5  # seconds /health waits for the model thread to answer
STATIC = Path(__file__).parent / "static"
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its format, on its stream


_STOP = object()


def _settle(future: Future, work: Callable[[], object]) -> None:
    """future resolves to work(), or to the exception it raised: the request's to report, not
    the model thread's."""
    try:
        future.set_result(work())
    except Exception as e:
        future.set_exception(e)


class ModelWorker:
    """The one thread that touches the model: it loads it, scores batches and reads reviews.

    Requests that pile up while the thread is busy are scored together, as one call to the
    model, up to `gather` reviews, in forward passes of `batch_size`. A request that arrives
    alone waits `wait` seconds for company, but only if the last batch had some: under
    concurrent clients that fills batches, and a lone client is not kept waiting for nobody.
    Other work on the model (`call`) runs between batches. A batch that fails is scored again
    request by request, so that a failure fails only the request it came from.

    The model is loaded on this thread too, so no other thread ever runs torch: with OpenMP
    thread teams for two threads on two cores, libgomp manages more threads than there are
    cores and stops spin-waiting, and every step of the LSTM then waits on a sleeping worker
    (one 250-word review: 2.5 ms from the thread that loaded the model, 10 ms from another).
    """

    def __init__(
        self,
        load: Callable[[], scorer.Scorer],
        batch_size: int,
        gather: int = GATHER,
        wait: float = GATHER_WAIT,
    ):
        self.batch_size, self.gather, self.wait = batch_size, gather, wait
        self.company = False  # the last batch held more than one request
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="zimdb-model", daemon=True)
        self.thread.start()
        try:
            self.trained: scorer.Scorer = self.call(load).result()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Finishes the jobs queued so far, then ends the thread."""
        self.jobs.put(_STOP)
        self.thread.join()

    def submit(self, texts: list[str]) -> Future:
        """Resolves to P(positive) of each text, a numpy array, once the thread scored them."""
        future: Future = Future()
        self.jobs.put((texts, future))
        return future

    def call(self, fn: Callable[[], object]) -> Future:
        """Resolves to fn(), run on the model thread."""
        future: Future = Future()
        self.jobs.put((fn, future))
        return future

    def _run(self) -> None:
        job = None
        while True:
            if job is None:
                job = self.jobs.get()
            if job is _STOP:
                return
            work, future = job
            if callable(work):
                if future.set_running_or_notify_cancel():
                    _settle(future, work)
                job = None
            else:
                batch, job = self._collect(job)
                self._score(batch)

    def _collect(self, first: tuple) -> tuple[list[tuple], object]:
        """`first` and the scoring jobs queued behind it (or arriving within `wait`), up to
        `gather` reviews; and the job that ended the batch early, if one did (else None)."""
        batch, size, pending = [first], len(first[0]), None
        deadline = time.monotonic() + (self.wait if self.company else 0)
        while size < self.gather:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is _STOP or callable(job[0]) or size + len(job[0]) > self.gather:
                pending = job
                break
            batch.append(job)
            size += len(job[0])
        self.company = len(batch) > 1 or pending is not None
        return batch, pending

    def _probabilities(self, texts: list[str]):
        return self.trained.probabilities(pd.Series(texts, dtype=object), self.batch_size)

    def _score(self, batch: list[tuple]) -> None:
        batch = [(texts, f) for texts, f in batch if f.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            probabilities = self._probabilities([text for texts, _ in batch for text in texts])
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
            else:  # some request's texts broke the call: each alone, only that one fails
                for texts, future in batch:
                    _settle(future, partial(self._probabilities, texts))
            return
        start = 0
        for texts, future in batch:
            future.set_result(probabilities[start : start + len(texts)])
            start += len(texts)


class BodyLimit:
    """413, in JSON, for a request body over `limit` bytes: refused by its Content-Length before
    any of it is read, or as soon as a streamed body passes the limit.

    Not FastAPI's max_body_size: given a Content-Length over it, that answers in plain text.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit
        self.detail = f"the body is over the limit of {limit} bytes ({limit / 2**20:g} MiB)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": self.detail}, 413)(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI passes an HTTPException met while reading the body on to its handler.
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, limited, send)


class Revalidated(StaticFiles):
    """Files a browser asks about again before each use (a 304 while unchanged): after an
    upgrade, a page never runs with the script of the last version."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


class Error(BaseModel):
    detail: str = Field(description="what was wrong, in one line")


# What the error answers look like, for the OpenAPI page (FastAPI would show its own 422 list).
UNAVAILABLE = {
    503: {"model": Error, "description": "the model thread has stopped, or did not answer in time"}
}
ERRORS = {
    413: {"model": Error, "description": "the body is over 1 MiB"},
    422: {"model": Error, "description": "not JSON, or not the JSON this route takes"},
    500: {"model": Error, "description": "scoring failed on the server (a bug; in its log)"},
    **UNAVAILABLE,
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="raw reviews")


class Prediction(BaseModel):
    label: Literal["positive", "negative"]
    probability: float = Field(description="P(positive)")


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="one raw review")


class ExplainResponse(BaseModel):
    label: Literal["positive", "negative"]
    probability: float = Field(description="P(positive), as /predict gives it")
    words: list[str] = Field(description="the words the model read: cleaned and truncated")
    unknown: list[bool] = Field(description="per word: not in the vocabulary, read as <unk>")
    cut: int = Field(description="words dropped by truncation, at the end `truncate` drops")
    truncate: Literal["head", "tail"] | None = Field(
        description="tail: the last max_len words kept; null: the model reads every word"
    )
    max_len: int | None = Field(description="the most words the model reads; null: no limit")
    running: list[float] | None = Field(
        description="per word: P(positive) had the review ended there; null where the model "
        "has no such verdict (see running_note)"
    )
    running_note: str | None


def shown(key: int | str) -> str:
    """A place in the body as a message shows it: a key of a megabyte is shortened, one with a
    line break escaped, so that the message stays one short line."""
    if isinstance(key, int):
        return f"[{key}]"
    key = key if len(key) <= 40 else key[:40] + "..."
    return "." + (key if key.isprintable() else ascii(key)[1:-1])


def describe(errors: list[dict]) -> str:
    """One readable line for a request's validation errors, e.g. `texts[2]: Input should be a
    valid string`: FastAPI's own list repeats each bad input, which may be a megabyte."""
    lines = []
    for error in errors:
        where = "".join(shown(p) for p in error["loc"][1:])
        if error["type"] == "json_invalid":
            lines.append(
                f"the body is not JSON ({error['ctx']['error']} at character {where[1:-1]})"
            )
        elif not where and error["type"] == "string_unicode":  # pydantic refuses such keys
            lines.append("a key of the body is no text: it holds a lone surrogate such as \\ud800")
        elif not where and isinstance(error.get("input"), bytes | str):
            lines.append("the body is not JSON: send Content-Type: application/json")
        elif not where and error["type"] == "missing":
            lines.append("no body: send a JSON object")
        elif not where:
            lines.append(f"the body must be a JSON object: {error['msg']}")
        else:
            lines.append(f"{where.lstrip('.')}: {error['msg']}")
    more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
    return "; ".join(lines[:3]) + more


def unparsed(error: BaseException | None) -> str | None:
    """Why json.loads refused a body, where FastAPI answers only a 400 "There was an error
    parsing the body" (it names JSONDecodeError alone)."""
    if isinstance(error, UnicodeDecodeError):
        return f"the body is not JSON: not UTF-8 (byte {error.start})"
    if isinstance(error, RecursionError):
        return "the body is not JSON this service reads: nested too deeply"
    if isinstance(error, ValueError):  # an integer of over 4300 digits, say
        return f"the body is not JSON this service reads ({one_line(str(error))})"
    return None


def create_app(
    worker: ModelWorker, timeout: float = TIMEOUT, health_timeout: float = HEALTH_TIMEOUT
) -> FastAPI:
    """The service of the model `worker` holds; the app stops the worker when it shuts down.

    A request waits `timeout` seconds for the model, /health `health_timeout`: then a 503.
    """
    trained = worker.trained
    note = running_note(trained)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.stop()

    app = FastAPI(
        title="zIMDB sentiment",
        summary="IMDB review sentiment from the LSTM the zIMDB pipeline trained",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and (reason := unparsed(exc.__cause__)):
            return JSONResponse({"detail": reason}, status_code=422)
        return await http_exception_handler(request, exc)

    async def answer(job: Future, wait: float, request: Request, what: str):
        """The model thread's result for `job`. A 503 if the thread has stopped or does not
        answer within `wait` seconds (the job is then dropped, if not yet started). A 500 if
        the job failed, which no input is known to make it do: a bug, logged in one line."""
        if not worker.thread.is_alive():
            raise HTTPException(503, "the model thread has stopped; restart the service")
        waiting = asyncio.wrap_future(job)
        done, _ = await asyncio.wait([waiting], timeout=wait)
        if not done:
            job.cancel()
            raise HTTPException(503, f"the model did not answer within {wait:g} s; try later")
        try:
            return waiting.result()
        except Exception as e:
            client = f"{request.client.host}:{request.client.port}" if request.client else "?"
            log.error(
                "%s %s from %s (%s) failed on the model thread: %s: %s",
                request.method,
                request.url.path,
                client,
                what,
                type(e).__name__,
                one_line(str(e)),
            )
            raise HTTPException(
                500, f"scoring failed on the server ({type(e).__name__}); its log has the error"
            ) from None

    @app.post("/predict", responses=ERRORS)
    async def predict(request: PredictRequest, http: Request) -> PredictResponse:
        """P(positive) and the label of each review, as `zimdb.predict` gives them."""
        job = worker.submit(request.texts)
        probabilities = await answer(job, timeout, http, f"{len(request.texts)} text(s)")
        return PredictResponse(
            predictions=[
                Prediction(label=labels(p).item(), probability=p) for p in probabilities.tolist()
            ]
        )

    @app.post("/explain", responses=ERRORS)
    async def explain(request: ExplainRequest, http: Request) -> ExplainResponse:
        """One review as the model read it and its verdict after each word, from one pass."""
        job = worker.call(lambda: read(trained, request.text))
        reading = await answer(job, timeout, http, f"a text of {len(request.text)} characters")
        return ExplainResponse(
            label=labels(reading.probability).item(),
            probability=reading.probability,
            words=reading.words,
            unknown=reading.unknown,
            cut=reading.cut,
            truncate=reading.truncate,
            max_len=reading.max_len,
            running=reading.running,
            running_note=note,
        )

    @app.get("/health", responses=UNAVAILABLE)
    async def health(http: Request) -> dict[str, str]:
        """ok while the model thread answers: a no-op on it, queued behind the requests."""
        await answer(worker.call(lambda: None), health_timeout, http, "a no-op")
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", Revalidated(directory=STATIC), name="static")
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    worker = ModelWorker(lambda: scorer.load(args.model, device), batch_size)
    print(
        f"serving {args.model} ({worker.trained.describe()}) on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(create_app(worker), host=args.host, port=args.port)


if __name__ == "__main__":
    run(main)
