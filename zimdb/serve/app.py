"""The web service's app: POST /predict and POST /explain answered by the model thread
(zimdb.serve.worker), GET /health, /docs, and the page at /. Bad input is a 4xx in JSON with one
line; a body over 1 MiB is a 413 before it is read.
"""

import asyncio
import logging
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from zimdb.errors import one_line
from zimdb.scoring.verdict import labels
from zimdb.serve.worker import MAX_TEXTS, ModelWorker

MAX_BODY = 1 << 20  # bytes
TIMEOUT = 30  # seconds a request waits for the model before a 503
HEALTH_TIMEOUT = 5  # seconds /health waits for the model thread to answer
STATIC = Path(__file__).parent / "static"
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
        job = worker.call(lambda: trained.read(request.text))
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
            running_note=trained.running_note,
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
