"""The one thread that runs the model, and how the requests waiting share its calls."""

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prometheus_client import Counter, Histogram

from zimdb.scoring.scorer import Scorer

MAX_TEXTS = 256  # per request
# Most reviews in one call to the model, taken in turns from the requests waiting: while fewer
# requests than this wait, one that arrives while the model is busy is in the next call, however
# many reviews they hold.
# Larger calls pad less and run faster; smaller ones keep a small request's wait short. On a
# 2-core AMD EPYC (Zen 5), 128 long reviews are about 0.06 s of work in bf16 and 0.2 s in fp32:
# under benchmarks/serve.py's overload a one-review request's p99 stayed under 0.3 and 0.7 s
# (docs/serving.md). A GPU scores 256 in one pass.
TURN = {"cpu": 128, "cuda": 256}
# Seconds the thread waits, after a call of several requests, for as many to be back.
GATHER_WAIT = 0.01
# Reviews per forward pass: a call sorts what it gathered by length and runs batches of this
# size. On a 2-core AMD EPYC (Zen 5), 16 ran fastest (256 gathered reviews: 1171 reviews/s at
# 16, 778 at 256, which pads more); a GPU wants large batches.
BATCH_SIZE = {"cpu": 16, "cuda": 256}
# The most reviews a request may have waiting to be scored before its last one (see
# ModelWorker.submit). On a 2-core AMD EPYC (Zen 5), 1024 long reviews are about 0.5 s of work in
# bf16 and 1.5 s in fp32: under benchmarks/serve.py's overload an answered request's p99 stayed
# under 2 and 4 s (docs/serving.md). A GPU scores far faster.
MAX_QUEUE = {"cpu": 1024, "cuda": 16384}


class Refused(Exception):
    """A request the worker does not take: busy, with the seconds after which to ask again, or
    stopped (retry_after None)."""

    def __init__(self, reason: str, retry_after: int | None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    """A request's reviews on their way through the model, a turn at a time."""

    texts: list[str]
    admitted: float  # time.monotonic() when it was queued
    future: Future = field(default_factory=Future)
    taken: int = 0  # reviews handed to the model so far
    parts: list[np.ndarray] = field(default_factory=list)  # their probabilities, turn by turn


class ModelWorker:
    """The one thread that touches the model: it loads it, scores reviews and reads them.

    The requests waiting take turns: each call to the model takes up to `turn` reviews from
    them, as many from each as it can share out evenly, oldest first; a request is answered once
    all its reviews are scored. A small request that arrives behind fewer than `turn` others is
    thus scored in the next call, however large they are. After a call of n requests the thread waits, up to `wait` seconds from its
    end, for n requests (or `turn` reviews) to be queued: concurrent clients fill calls, and a
    lone client is not kept waiting for nobody. Other work on the model (`call`) runs between
    calls. A call that fails is made again request by request, so that a failure fails
    only the request it came from.

    A request is refused (Refused) when the reviews to be scored before its last one, its own
    included, would be more than `max_queue`, unless nothing waits.

    The model is loaded on this thread too, so no other thread ever runs torch: with OpenMP
    thread teams for two threads on two cores, libgomp manages more threads than there are
    cores and stops spin-waiting, and every step of the LSTM then waits on a sleeping worker
    (one 250-word review: 2.5 ms from the thread that loaded the model, 10 ms from another).
    """

    def __init__(
        self,
        load: Callable[[], Scorer],
        batch_size: int,
        turn: int = TURN["cpu"],
        wait: float = GATHER_WAIT,
        max_queue: int = MAX_QUEUE["cpu"],
    ):
        self.batch_size, self.turn, self.wait, self.max_queue = batch_size, turn, wait, max_queue
        self.expect = 1  # requests the last call held: the thread waits for as many
        self.ended = 0.0  # time.monotonic() when the last call ended
        self.lock = threading.Condition()
        self.jobs: deque[Job] = deque()  # requests with reviews not yet taken, in turn order
        self.calls: deque[tuple[Callable[[], object], Future]] = deque()
        self.waiting = 0  # reviews of self.jobs not yet taken
        self.stopping = False
        self.busy_since: float | None = None  # when the current piece of work began; None: idle
        self.rate: float | None = None  # reviews a second the model scored lately
        # The model's side of the service's metrics; the app registers them.
        self.reviews = Histogram(
            "zimdb_model_call_reviews",
            "Reviews scored in one call to the model",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=None,
        )
        self.seconds = Histogram(
            "zimdb_model_call_seconds", "Seconds of one call to the model", registry=None
        )
        self.scored = Counter("zimdb_reviews_scored", "Reviews the model scored", registry=None)
        self.queued = Histogram(
            "zimdb_queue_wait_seconds",
            "Seconds a request waited for its first turn on the model",
            registry=None,
        )
        self.thread = threading.Thread(target=self._run, name="zimdb-model", daemon=True)
        self.thread.start()
        try:
            self.trained: Scorer = self.call(load).result()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float | None = None) -> bool:
        """Finishes the work queued so far, then ends the thread; False if it has not ended
        within `timeout` seconds (a stuck thread: a daemon, it does not keep the process)."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def submit(self, texts: list[str]) -> Job:
        """Queues the texts; job.future resolves to P(positive) of each, a numpy array."""
        if not texts:  # a job with nothing to take would stay at the front of the turns
            job = Job(texts, time.monotonic())
            job.future.set_result(np.empty(0))
            return job
        with self.lock:
            self._admit(len(texts))
            job = Job(texts, time.monotonic())
            self.jobs.append(job)
            self.waiting += len(texts)
            if len(self.jobs) == 1 or self._enough():  # else the thread waits on for more
                self.lock.notify()
        return job

    def call(self, fn: Callable[[], object]) -> Future:
        """Resolves to fn(), run on the model thread between calls; admitted as one review."""
        future: Future = Future()
        with self.lock:
            self._admit(1)
            self.calls.append((fn, future))
            self.lock.notify()
        return future

    def withdraw(self, job: Job) -> bool:
        """Gives up on `job`: its reviews not yet taken are never scored. False if it was
        answered already."""
        with self.lock:
            if not job.future.cancel():
                return False
            if job in self.jobs:
                self.jobs.remove(job)
                self.waiting -= len(job.texts) - job.taken
            return True

    def stalled(self) -> float:
        """Seconds the thread has spent on its current piece of work; 0 while it idles."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _admit(self, size: int) -> None:
        if self.stopping:
            raise Refused("the model thread has stopped; restart the service", None)
        # Turns give every request waiting up to `size` reviews before this one's last.
        before = sum(min(len(j.texts) - j.taken, size) for j in self.jobs) + len(self.calls)
        if before and before + size > self.max_queue:
            over = before + size - self.max_queue
            retry = max(1, math.ceil(over / self.rate)) if self.rate else 1
            raise Refused(
                f"busy: this request's {size} review(s) and the {before} to be scored before its "
                f"last pass --max-queue {self.max_queue}; retry in {retry} s",
                retry,
            )

    def _enough(self) -> bool:
        """Whether the thread has what it waits for: as many requests as the last call held,
        a full call's reviews, a job (`call`), or the order to stop."""
        return (
            self.stopping
            or bool(self.calls)
            or len(self.jobs) >= self.expect
            or self.waiting >= self.turn
        )

    def _run(self) -> None:
        while True:
            with self.lock:
                self.busy_since = None
                while not (self.jobs or self.calls or self.stopping):
                    self.lock.wait()
                # The clients of the last call send their next requests as they get their
                # answers: waiting for them makes one call of what would otherwise be several
                # smaller ones, each padded to its longest review.
                deadline = self.ended + self.wait
                while not self._enough() and (left := deadline - time.monotonic()) > 0:
                    self.lock.wait(left)
                if not (self.jobs or self.calls):
                    return
                self.busy_since = time.monotonic()
                call = self.calls.popleft() if self.calls else None
            if call is not None:
                fn, future = call
                if future.set_running_or_notify_cancel():
                    _settle(future, fn)
                self.busy_since = time.monotonic()
            pieces = self._take()
            if pieces:
                self._score(pieces)
                self.ended = time.monotonic()

    def _take(self) -> list[tuple[Job, int, int]]:
        """The next call's reviews: (job, start, stop) of each request's texts taken, up to
        `turn` in all, shared out evenly in turn order. Requests with reviews left after it
        go to the back of the queue."""
        with self.lock:
            if not self.jobs:
                return []
            jobs = list(self.jobs)
            shares = [0] * len(jobs)
            budget, open_ = self.turn, list(range(len(jobs)))
            while budget and open_:
                each, still = max(budget // len(open_), 1), []
                for i in open_:
                    share = min(each, len(jobs[i].texts) - jobs[i].taken - shares[i], budget)
                    shares[i] += share
                    budget -= share
                    if jobs[i].taken + shares[i] < len(jobs[i].texts):
                        still.append(i)
                    if not budget:
                        break
                open_ = still
            pieces, now = [], time.monotonic()
            for job, share in zip(jobs, shares, strict=True):
                if not share:
                    break  # the jobs served are the first ones: the rest wait at the front
                self.jobs.popleft()
                if not job.taken:
                    self.queued.observe(now - job.admitted)
                pieces.append((job, job.taken, job.taken + share))
                job.taken += share
                if job.taken < len(job.texts):
                    self.jobs.append(job)
            self.waiting -= self.turn - budget
            self.expect = len(pieces)
            return pieces

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """P(positive) of `texts` in one call to the model, counted in the metrics."""
        began = time.monotonic()
        probabilities = self.trained.probabilities(pd.Series(texts, dtype=object), self.batch_size)
        seconds = time.monotonic() - began
        self.reviews.observe(len(texts))
        self.seconds.observe(seconds)
        self.scored.inc(len(texts))
        # Smoothed over a few calls: the estimate behind a refusal's Retry-After.
        rate = len(texts) / max(seconds, 1e-6)
        self.rate = rate if self.rate is None else 0.8 * self.rate + 0.2 * rate
        return probabilities

    def _score(self, pieces: list[tuple[Job, int, int]]) -> None:
        texts = [text for job, start, stop in pieces for text in job.texts[start:stop]]
        try:
            probabilities = self._probabilities(texts)
        except Exception as e:
            if len(pieces) == 1:
                self._fail(pieces[0][0], e)
            else:  # some request's texts broke the call: each alone, only that one fails
                for job, start, stop in pieces:
                    try:
                        self._deliver(job, stop, self._probabilities(job.texts[start:stop]))
                    except Exception as e:
                        self._fail(job, e)
            return
        offset = 0
        for job, start, stop in pieces:
            self._deliver(job, stop, probabilities[offset : offset + stop - start])
            offset += stop - start

    def _deliver(self, job: Job, stop: int, probabilities: np.ndarray) -> None:
        job.parts.append(probabilities)
        if stop == len(job.texts) and job.future.set_running_or_notify_cancel():
            job.future.set_result(np.concatenate(job.parts))

    def _fail(self, job: Job, error: Exception) -> None:
        with self.lock:
            if job in self.jobs:  # its reviews not yet taken are not scored
                self.jobs.remove(job)
                self.waiting -= len(job.texts) - job.taken
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(error)


def _settle(future: Future, work: Callable[[], object]) -> None:
    """future resolves to work(), or to the exception it raised: the request's to report, not
    the model thread's."""
    try:
        future.set_result(work())
    except Exception as e:
        future.set_exception(e)
