"""The one thread that runs the model, and how it gathers concurrent requests into batches."""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

import pandas as pd

from zimdb.scoring.scorer import Scorer

MAX_TEXTS = 256  # per request
GATHER = MAX_TEXTS  # most reviews scored in one call to the model: one full request
GATHER_WAIT = 0.002  # seconds a request arriving alone waits for others, if the last had company
# Reviews per forward pass: a call sorts what it gathered by length and runs batches of this
# size. On the project's 2-core CPU, 16 ran fastest (256 gathered reviews: 1171 reviews/s at
# 16, 778 at 256, which pads more); a GPU wants large batches.
BATCH_SIZE = {"cpu": 16, "cuda": 256}

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
        load: Callable[[], Scorer],
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
            self.trained: Scorer = self.call(load).result()
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
