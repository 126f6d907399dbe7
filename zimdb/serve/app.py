"""The web service's app: POST /predict and POST /explain answered by the model thread
(zimdb.serve.worker), GET /health (liveness), GET /ready (readiness), GET /metrics (Prometheus),
/docs, and the page at /. Bad input is a 4xx in JSON with one line; a body over 1 MiB is a 413
before it is read; work over the queue's bound is a 503 with Retry-After, at once.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from zimdb.errors import one_line
from zimdb.scoring.scorer import Scorer
from zimdb.scoring.verdict import labels
from zimdb.serve.worker import MAX_TEXTS, Job, ModelWorker, Refused

MAX_BODY = 1 << 20  # bytes
# Seconds a request waits for the model before a 503: a safety net, as the queue's bound keeps
# waits far shorter (zimdb.serve.worker.MAX_QUEUE).
MAX_WAIT = 10
# Seconds the model thread may spend on one piece of work (a call scores at most 128 reviews on a
# CPU: a fraction of a second) before liveness fails: it is stuck.
STUCK_AFTER = 30
STATIC = Path(__file__).parent / "static"
# Methods the metrics name; any other is "other", so that a client cannot add labels without end.
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its format, on its stream


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
        if length.isascii() and length.isdigit() and int(length) > self.limit:
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
    503: {
        "model": Error,
        "description": "busy (with Retry-After), or the model thread stopped, stuck or late",
    }
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


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app), with the model
    thread's (ModelWorker's) and the process's."""

    def __init__(self, worker: ModelWorker, model: dict[str, str]):
        self.registry = CollectorRegistry()
        for metric in (worker.reviews, worker.seconds, worker.scored, worker.queued):
            self.registry.register(metric)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "zimdb_http_requests",
            "HTTP requests answered, by route (its template, e.g. /static) and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zimdb_http_request_seconds",
            "Seconds from a request's arrival to the end of its answer, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.refused = Counter(
            "zimdb_refused",
            "Requests answered 503 by the service: busy (over --max-queue), the model thread "
            "stopped or stuck, or timed_out (no answer within --max-wait)",
            ["reason"],
            registry=self.registry,
        )
        Gauge(
            "zimdb_queue_reviews", "Reviews waiting for the model", registry=self.registry
        ).set_function(lambda: worker.waiting)
        Gauge(
            "zimdb_queue_requests", "Requests with reviews waiting", registry=self.registry
        ).set_function(lambda: len(worker.jobs))
        Gauge(
            "zimdb_model_thread_stalled_seconds",
            "Seconds the model thread has spent on its current piece of work (0: idle)",
            registry=self.registry,
        ).set_function(worker.stalled)
        Info("zimdb_model", "The model served", registry=self.registry).info(model)


class Measured:
    """Counts and times every request for Metrics, by the route that answered it: its template,
    not the path, which a client could vary without end."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def route(self, scope: Scope) -> str:
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return getattr(route, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Matched first: a mount (/static) rewrites the scope's root path for the app inside.
        start, status, route = time.perf_counter(), 500, self.route(scope)

        async def sent(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def model_identity(path: Path, trained: Scorer) -> dict[str, str]:
    """What names the model served in the metrics: its file, the file's SHA-256, the model and
    the precision it scores in (the LSTM's; the baseline has no choice of one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    scoring = getattr(trained, "scoring", None)
    return {
        "file": str(path),
        "sha256": digest.hexdigest(),
        "model": trained.describe(),
        "precision": scoring.name if scoring else "",
    }


def create_app(
    worker: ModelWorker,
    max_wait: float = MAX_WAIT,
    stuck_after: float = STUCK_AFTER,
    model: dict[str, str] | None = None,
) -> FastAPI:
    """The service of the model `worker` holds; the app stops the worker when it shuts down.

    A request waits `max_wait` seconds for the model: then a 503. Liveness fails once the model
    thread has spent `stuck_after` seconds on one piece of work. `model` names the model served
    in the metrics (see model_identity). Setting app.state.draining makes readiness fail (the
    server does, on SIGTERM).
    """
    trained = worker.trained
    metrics = Metrics(worker, model or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # The requests are all answered or cancelled by now: what the thread still runs is one
        # call, which takes under --stuck-after unless the thread is stuck.
        if not worker.stop(timeout=stuck_after):
            log.error(
                "the model thread did not end within --stuck-after %g s; exiting without it",
                stuck_after,
            )

    app = FastAPI(
        title="zIMDB sentiment",
        summary="IMDB review sentiment from the LSTM the zIMDB pipeline trained",
        lifespan=lifespan,
    )
    app.state.draining = False
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(Measured, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and (reason := unparsed(exc.__cause__)):
            return JSONResponse({"detail": reason}, status_code=422)
        return await http_exception_handler(request, exc)

    def unwell() -> tuple[str, str] | None:
        """Why the model thread cannot answer, if it cannot: (the reason's label, one line)."""
        if not worker.thread.is_alive():
            return "stopped", "the model thread has stopped; restart the service"
        stalled = worker.stalled()
        if stalled >= stuck_after:
            return "stuck", (
                f"the model thread is stuck: {stalled:.0f} s on one piece of work, "
                f"over --stuck-after {stuck_after:g}; restart the service"
            )
        return None

    async def answer(submit: Callable[[], Job | Future], request: Request, what: str):
        """The model thread's result for the job submit() queues. A 503 at once if the thread
        has stopped or is stuck, or if the job is refused (busy, with Retry-After); a 503 if it
        does not answer within max_wait seconds (the job is then given up). A 500 if the job
        failed, which no input is known to make it do: a bug, logged in one line."""
        if trouble := unwell():
            metrics.refused.labels(trouble[0]).inc()
            raise HTTPException(503, trouble[1])
        try:
            job = submit()
        except Refused as e:
            if e.retry_after is None:
                metrics.refused.labels("stopped").inc()
                raise HTTPException(503, str(e)) from None
            metrics.refused.labels("busy").inc()
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        future = job.future if isinstance(job, Job) else job

        def give_up() -> bool:
            """Whether the job was given up: False if the model thread has its answer already."""
            return worker.withdraw(job) if isinstance(job, Job) else future.cancel()

        waiting = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait([waiting], timeout=max_wait)
        except asyncio.CancelledError:  # the server cut the request off (past --grace)
            give_up()
            raise
        if not done and give_up():
            metrics.refused.labels("timed_out").inc()
            raise HTTPException(503, f"the model did not answer within {max_wait:g} s; try later")
        if not done:  # answered as it timed out: /explain's call may still be running
            await asyncio.wait([waiting])
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

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(request: PredictRequest, http: Request) -> Response:
        """P(positive) and the label of each review, as `zimdb.predict` gives them."""
        probabilities = await answer(
            lambda: worker.submit(request.texts), http, f"{len(request.texts)} text(s)"
        )
        # Built here, not by FastAPI from the PredictResponse it documents: its validation and
        # serialisation took a third of the service's time per request (16 clients of one
        # review, a model that takes no time, on a 2-core AMD EPYC: 3,060 -> 4,566 requests/s).
        predictions = [
            {"label": label, "probability": p}
            for label, p in zip(labels(probabilities).tolist(), probabilities.tolist(), strict=True)
        ]
        return JSONResponse({"predictions": predictions})

    @app.post("/explain", responses=ERRORS)
    async def explain(request: ExplainRequest, http: Request) -> ExplainResponse:
        """One review as the model read it and its verdict after each word, from one pass."""
        reading = await answer(
            lambda: worker.call(lambda: trained.read(request.text)),
            http,
            f"a text of {len(request.text)} characters",
        )
        return ExplainResponse(
            label=labels(reading.probability).item(),
            probability=reading.probability,
            words=reading.words,
            unknown=reading.unknown,
            cut=reading.cut,
            truncate=reading.truncate,
            max_len=reading.max_len,
            running=reading.running,
            running_note=trained.running_note,
        )

    @app.get("/health", responses=UNAVAILABLE)
    async def health() -> dict[str, str]:
        """Liveness: ok while the model thread lives and makes progress, whatever the load;
        a 503 once it has stopped, or spent --stuck-after seconds on one piece of work."""
        if trouble := unwell():
            raise HTTPException(503, trouble[1])
        return {"status": "ok"}

    @app.get("/ready", responses=UNAVAILABLE)
    async def ready() -> dict[str, str]:
        """Readiness: ready while the service takes work; a 503 while it shuts down, while the
        model thread is unwell, and while as many reviews wait as --max-queue."""
        if app.state.draining:
            raise HTTPException(503, "shutting down: answering the requests taken, no new ones")
        if trouble := unwell():
            raise HTTPException(503, trouble[1])
        if worker.waiting >= worker.max_queue:
            raise HTTPException(
                503, f"busy: {worker.waiting} reviews wait, --max-queue {worker.max_queue}"
            )
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", Revalidated(directory=STATIC), name="static")
    return app
