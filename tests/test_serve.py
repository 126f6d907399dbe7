"""The web service: the numbers predict and evaluate give, bad input refused in JSON, the running
verdict, requests batched on one model thread, a bounded load on a real server, and the page in
a real browser."""

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.client import HTTPConnection

import numpy as np
import pandas as pd
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, dvc, model_config, python_env, run
from zimdb import errors
from zimdb.data import text
from zimdb.data.encoding import Encoding
from zimdb.model.file import ModelFile
from zimdb.model.lstm import SentimentLSTM
from zimdb.scoring.lstm import LSTMScorer
from zimdb.serve import __main__ as serve
from zimdb.serve.app import MAX_BODY, STATIC, create_app, model_identity
from zimdb.serve.worker import MAX_TEXTS, ModelWorker

JSON = {"Content-Type": "application/json"}
MIXED = "The first half is wonderful. But then it all falls apart: dull, boring, a waste."
ODD = ["", "   \t ", "<br /><p></p>", "素晴らしい映画 отличный", "zzqx vbnm", "great " * 5000]


@pytest.fixture(scope="module")
def trained(built) -> LSTMScorer:
    root, _ = built
    return LSTMScorer.load(root / "data/model.pt")


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(app(trained)) as client:
        yield client


def app(trained: LSTMScorer):
    return create_app(ModelWorker(lambda: trained, batch_size=16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    """Where the server fixture's stderr goes: uvicorn's log."""
    return tmp_path_factory.mktemp("serve") / "stderr.log"


@pytest.fixture(scope="module")
def server(built, server_log):
    """`python -m zimdb.serve` on the built model, on a free port of 127.0.0.1: (host, port)."""
    root, _ = built
    port = free_port()
    with open(server_log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zimdb.serve", "--model", "data/model.pt", "--port", str(port)],
            cwd=root,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                conn = HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the server did not start:\n{server_log.read_text()}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def post(client: TestClient, path: str, body) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_equals_what_evaluate_computed(built, client):
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    evaluated = pd.read_parquet(root / "data/predictions/test.parquet")
    got = post(client, "/predict", {"texts": raw.text.tolist()})["predictions"]
    probability = np.array([p["probability"] for p in got])
    np.testing.assert_allclose(probability, evaluated.probability, atol=1e-6)
    assert [p["label"] for p in got] == np.where(probability > 0.5, "positive", "negative").tolist()


def test_odd_texts_are_scored_as_predict_scores_them(client, trained):
    got = post(client, "/predict", {"texts": ODD})["predictions"]
    probability = [p["probability"] for p in got]
    np.testing.assert_allclose(probability, trained.probabilities(pd.Series(ODD)), atol=1e-6)
    # Nothing of the empty, blank, HTML-only and non-Latin texts survives cleaning: one answer.
    assert len({probability[i] for i in (0, 1, 2, 3)}) == 1


def test_lone_surrogates_are_read_as_replacement_characters(client, trained):
    """JSON's "\\ud800" is no character UTF-8 can encode: read as U+FFFD, as a UTF-8 decoder
    reads a bad byte, by /predict and /explain alike."""
    texts = ["A wonderful\ud800film", "\udcff", "dull \ude00\ud83d boring"]
    replaced = pd.Series([re.sub("[\ud800-\udfff]", "\ufffd", t) for t in texts])
    expected = trained.probabilities(replaced)
    # json.dumps escapes them as \\u escapes; httpx's json= would fail to encode them.
    got = client.post("/predict", content=json.dumps({"texts": texts}), headers=JSON)
    assert got.status_code == 200, got.text
    probability = [p["probability"] for p in got.json()["predictions"]]
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    read = client.post("/explain", content=json.dumps({"text": texts[0]}), headers=JSON)
    assert read.status_code == 200, read.text
    assert read.json()["words"] == ["a", "wonderful", "film"]
    assert read.json()["probability"] == pytest.approx(expected[0], abs=1e-6)


BAD = {
    "not JSON": (
        dict(content=b"texts: great", headers={"content-type": "application/json"}),
        422,
        "the body is not JSON (Expecting value at character 0)",
    ),
    "not declared JSON": (
        dict(content=json.dumps({"texts": ["great"]}), headers={"content-type": "text/plain"}),
        422,
        "the body is not JSON: send Content-Type: application/json",
    ),
    "no body": (dict(), 422, "no body: send a JSON object"),
    "a list, not an object": (
        dict(json=["great"]),
        422,
        "the body must be a JSON object: Input should be a valid dictionary or object to "
        "extract fields from",
    ),
    "texts a string": (dict(json={"texts": "great"}), 422, "texts: Input should be a valid list"),
    "non-string texts": (
        dict(json={"texts": ["fine", 3, None]}),
        422,
        "texts[1]: Input should be a valid string; texts[2]: Input should be a valid string",
    ),
    "many non-string texts": (
        dict(json={"texts": list(range(5))}),
        422,
        "texts[0]: Input should be a valid string; texts[1]: Input should be a valid string; "
        "texts[2]: Input should be a valid string (and 2 more)",
    ),
    "no texts": (
        dict(json={"texts": []}),
        422,
        "texts: List should have at least 1 item after validation, not 0",
    ),
    "too many texts": (
        dict(json={"texts": ["great"] * (MAX_TEXTS + 1)}),
        422,
        f"texts: List should have at most {MAX_TEXTS} items after validation, not {MAX_TEXTS + 1}",
    ),
    "a misspelt key": (
        dict(json={"text": ["great"]}),
        422,
        "texts: Field required; text: Extra inputs are not permitted",
    ),
    "a key with a line break, and one of 1000 characters": (
        dict(json={"texts": ["great"], "a\nb": 1, "k" * 1000: 2}),
        422,
        f"a\\nb: Extra inputs are not permitted; {'k' * 40}...: Extra inputs are not permitted",
    ),
    "a lone surrogate in a key": (
        dict(content=b'{"texts": ["great"], "\\ud800": 1}', headers=JSON),
        422,
        "a key of the body is no text: it holds a lone surrogate such as \\ud800",
    ),
    "not UTF-8": (
        dict(content='{"texts": ["café"]}'.encode("latin-1"), headers=JSON),
        422,
        "the body is not JSON: not UTF-8 (byte 15)",
    ),
    "nested too deeply": (
        dict(content=b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=JSON),
        422,
        "the body is not JSON this service reads: nested too deeply",
    ),
    "over the size limit": (
        dict(
            content=json.dumps({"texts": ["a" * MAX_BODY]}),
            headers={"content-type": "application/json"},
        ),
        413,
        "the body is over the limit of 1048576 bytes (1 MiB)",
    ),
    # A body sent in chunks has no Content-Length: it is counted as it arrives.
    "over the size limit, streamed": (
        dict(
            content=(b'"aaaaaaaa",' * 1000 for _ in range(MAX_BODY // 10_000)),
            headers={"content-type": "application/json"},
        ),
        413,
        "the body is over the limit of 1048576 bytes (1 MiB)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_with_a_readable_message(client, case):
    kwargs, status, message = BAD[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.json() == {"detail": message}


def test_explain_refuses_a_non_string_text(client):
    response = client.post("/explain", json={"text": ["great"]})
    assert response.status_code == 422
    assert response.json() == {"detail": "text: Input should be a valid string"}


def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_sent(server):
    """The server answers from the headers alone: no byte of the body has been sent."""
    with socket.create_connection(server, timeout=20) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        answer = b""
        while b"}" not in answer:
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"detail":"the body is over the limit of 1048576 bytes (1 MiB)"}')


def read_words(review: str) -> list[str]:
    return text.clean(pd.Series([review])).iloc[0].split()


@pytest.mark.parametrize("truncate", ["tail", "head"])
def test_explain_gives_the_words_read_and_the_running_verdict(built, trained, truncate):
    root, _ = built
    encoding = replace(trained.file.encoding, truncate=truncate)
    trained = LSTMScorer.of(replace(trained.file, encoding=encoding))
    max_len = encoding.max_len
    raw = pd.read_parquet(root / "data/raw/test.parquet").text
    review = max(raw, key=len) + " zzqx qwvbn"  # longer than max_len; two unknown words
    words = read_words(review)
    assert len(words) > max_len
    with TestClient(app(trained)) as client:
        got = post(client, "/explain", {"text": review})
        predicted = post(client, "/predict", {"texts": [review]})["predictions"][0]
    kept = words[-max_len:] if truncate == "tail" else words[:max_len]
    assert got["words"] == kept
    assert got["cut"] == len(words) - max_len
    assert (got["truncate"], got["max_len"]) == (truncate, max_len)
    vocab = set(encoding.vocab)
    assert got["unknown"] == [w not in vocab for w in kept]
    assert (got["unknown"][-2:] == [True, True]) == (truncate == "tail")
    assert len(got["running"]) == len(kept) and got["running_note"] is None
    assert all(0 <= p <= 1 for p in got["running"])
    # For pooling "last" the state at the last word is what the head reads for the verdict.
    assert got["running"][-1] == pytest.approx(predicted["probability"], abs=1e-6)
    assert got["probability"] == pytest.approx(predicted["probability"], abs=1e-6)
    assert got["label"] == predicted["label"]


def random_model(**config) -> LSTMScorer:
    torch.manual_seed(0)
    vocab = text.SPECIALS + ["not", "bad", "at", "all", "but", "the", "end", "is", "awful"]
    model = SentimentLSTM(model_config(len(vocab), embedding_dim=6, hidden_dim=5, **config))
    return LSTMScorer.of(ModelFile(model.eval(), Encoding(vocab, 8, "tail"), "fp32"))


@pytest.mark.parametrize("pooling", ["last", "concat"])
def test_running_verdict_is_the_verdict_on_each_prefix(pooling):
    """The probability at word t is what the model says of the review cut after word t."""
    trained = random_model(num_layers=2, pooling=pooling)
    review = "not bad at all, but the zzqx end is awful"
    reading = trained.read(review)
    words = review.replace(",", "").split()
    assert reading.words == words[-8:] and reading.cut == len(words) - 8
    prefixes = pd.Series([" ".join(reading.words[: t + 1]) for t in range(len(reading.words))])
    np.testing.assert_allclose(reading.running, trained.probabilities(prefixes), atol=1e-6)


def test_explain_of_an_empty_review_has_no_words_and_the_predicted_verdict(client, trained):
    got = post(client, "/explain", {"text": "<br /> 42 !"})
    assert (got["words"], got["unknown"], got["running"], got["cut"]) == ([], [], [], 0)
    assert got["probability"] == pytest.approx(trained.probabilities(pd.Series([""]))[0], abs=1e-6)


class SlowModel:
    """Stands in for LSTMScorer: records each call and holds the first until released. Its
    probability of a text is the number the text spells (any other text fails the call)."""

    def __init__(self):
        self.calls, self.busy, self.release = [], threading.Event(), threading.Event()

    def probabilities(self, texts: pd.Series, batch_size: int) -> np.ndarray:
        self.calls.append(texts.tolist())
        self.busy.set()
        assert self.release.wait(10)
        return texts.astype(float).to_numpy()


@contextlib.contextmanager
def released(**options):
    """A ModelWorker on a SlowModel that holds no call: (model, worker), stopped after."""
    model = SlowModel()
    model.release.set()
    worker = ModelWorker(lambda: model, batch_size=2, **options)
    try:
        yield model, worker
    finally:
        worker.stop()


def test_requests_waiting_take_turns_and_a_small_one_is_scored_in_the_next_call():
    """Each call takes up to `turn` reviews, shared out evenly among the requests waiting: the
    one-review request that arrived behind eight is scored in the first call after."""
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2, turn=4, wait=0.0)
    try:
        first = worker.submit(["0"])
        assert model.busy.wait(10)
        big = worker.submit([str(i) for i in range(1, 9)])
        small = worker.submit(["9"])
        other = worker.call(lambda: "ran")
        pair = worker.submit(["10", "11"])
        model.release.set()
        results = [job.future.result(10) for job in (first, big, small, pair)]
        assert other.result(10) == "ran"
    finally:
        worker.stop()
    assert model.calls == [
        ["0"],
        ["1", "2", "9", "10"],  # 4 shared by 3: one each, the spare to the oldest
        ["3", "4", "5", "11"],  # the small one done: 2 each, the spare to the oldest
        ["6", "7", "8"],
    ]
    assert [r.tolist() for r in results] == [[0], list(range(1, 9)), [9], [10, 11]]


def test_a_failing_request_fails_alone_when_scored_with_others():
    """A batch that fails is scored again request by request: only the culprit fails."""
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2, turn=8, wait=0.0)
    try:
        first = worker.submit(["0"])
        assert model.busy.wait(10)
        jobs = [worker.submit(t) for t in (["1"], ["poison"], ["2", "3"])]
        before, poisoned, after = (job.future for job in jobs)
        model.release.set()
        assert first.future.result(10).tolist() == [0]
        assert before.result(10).tolist() == [1] and after.result(10).tolist() == [2, 3]
        with pytest.raises(ValueError, match="poison"):
            poisoned.result(10)
    finally:
        worker.stop()
    assert model.calls == [["0"], ["1", "poison", "2", "3"], ["1"], ["poison"], ["2", "3"]]


def test_a_request_that_fails_in_one_turn_has_its_other_reviews_dropped():
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2, turn=2, wait=0.0)
    try:
        worker.submit(["0"])
        assert model.busy.wait(10)
        poisoned = worker.submit(["1", "poison", "2", "3"])
        model.release.set()
        with pytest.raises(ValueError, match="poison"):
            poisoned.future.result(10)
        assert worker.submit(["4"]).future.result(10).tolist() == [4]
    finally:
        worker.stop()
    assert model.calls == [["0"], ["1", "poison"], ["4"]]
    assert worker.waiting == 0


def test_a_failure_on_the_model_thread_is_a_json_500_and_one_log_line(monkeypatch, caplog):
    trained = random_model()

    def probabilities(texts: pd.Series, batch_size: int = 256) -> np.ndarray:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    monkeypatch.setattr(trained, "probabilities", probabilities)
    with TestClient(app(trained)) as client, caplog.at_level(logging.INFO, "uvicorn.error"):
        response = client.post("/predict", json={"texts": ["not bad", "awful"]})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "scoring failed on the server (RuntimeError); its log has the error"
    }
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage() == (
        "POST /predict from testclient:50000 (2 text(s)) failed on the model thread: "
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )


def test_a_request_not_answered_within_max_wait_is_a_503_and_given_up(monkeypatch):
    trained = random_model()
    busy, release, scored, score = threading.Event(), threading.Event(), [], trained.probabilities

    def probabilities(texts: pd.Series, batch_size: int = 256) -> np.ndarray:
        scored.append(texts.tolist())
        busy.set()
        assert release.wait(10)
        return score(texts, batch_size)

    monkeypatch.setattr(trained, "probabilities", probabilities)
    worker = ModelWorker(lambda: trained, batch_size=2)
    with TestClient(create_app(worker, max_wait=0.2)) as client:
        first = worker.submit(["not bad"])
        assert busy.wait(10)
        response = client.post("/predict", json={"texts": ["awful"]})
        assert response.status_code == 503
        assert response.json() == {"detail": "the model did not answer within 0.2 s; try later"}
        assert worker.waiting == 0
        release.set()
        first.future.result(10)
        assert post(client, "/predict", {"texts": ["the end"]})["predictions"][0]["label"]
    assert scored == [["not bad"], ["the end"]]  # the request given up on was dropped unscored


def test_liveness_readiness_and_every_request_are_a_503_once_the_model_thread_has_stopped():
    worker = ModelWorker(random_model, batch_size=2)
    stopped = {"detail": "the model thread has stopped; restart the service"}
    with TestClient(create_app(worker)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        worker.stop()
        # One at a time: a request to a stopped thread once waited for ever.
        for ask in (
            lambda: client.get("/health"),
            lambda: client.get("/ready"),
            lambda: client.post("/predict", json={"texts": ["fine"]}),
            lambda: client.post("/explain", json={"text": "fine"}),
        ):
            response = ask()
            assert (response.status_code, response.json()) == (503, stopped)


def test_a_lone_request_is_not_kept_waiting_for_company():
    with released(wait=60.0) as (_, worker):
        for i in range(3):  # would time out, had it waited the minute for others
            assert worker.submit([str(i)]).future.result(10).tolist() == [i]


def test_an_empty_request_is_answered_at_once_and_holds_up_nothing():
    with released(wait=0.0) as (model, worker):
        assert worker.submit([]).future.result(10).tolist() == []
        assert worker.submit(["1"]).future.result(10).tolist() == [1]
        assert model.calls == [["1"]]


def test_a_job_answered_already_is_not_withdrawn():
    with released(wait=0.0) as (_, worker):
        job = worker.submit(["1"])
        assert job.future.result(10).tolist() == [1]
        assert not worker.withdraw(job)
        assert job.future.result().tolist() == [1]


def test_stopping_gives_up_on_a_stuck_model_thread_after_its_timeout():
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2)
    worker.submit(["1"])
    assert model.busy.wait(10)
    assert worker.stop(timeout=0.1) is False
    model.release.set()
    worker.thread.join(10)
    assert not worker.thread.is_alive()


def test_the_model_is_loaded_and_run_on_one_thread_of_its_own():
    threads = set()

    def load():
        threads.add(threading.current_thread())
        return SlowModel()

    worker = ModelWorker(load, batch_size=2)
    worker.trained.release.set()
    try:
        worker.submit(["1"]).future.result(10)
        threads.add(worker.call(threading.current_thread).result(10))
    finally:
        worker.stop()
    assert threads == {worker.thread} and not worker.thread.is_alive()


class HeldModel(SlowModel):
    """SlowModel as the app needs it: it describes itself."""

    running_note = None

    def describe(self) -> str:
        return "a held model"


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample of the app's /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_work_over_the_bound_is_refused_at_once_and_every_request_taken_is_answered():
    model = HeldModel()
    worker = ModelWorker(lambda: model, batch_size=2, turn=4, wait=0.0, max_queue=4)
    with TestClient(create_app(worker)) as client:
        first = worker.submit(["0"])
        assert model.busy.wait(10)
        waiting = worker.submit(["1", "2", "3"])
        assert client.get("/ready").json() == {"status": "ready"}
        # 3 of the waiting reviews would be scored before its last, and its own 3: over 4.
        response = client.post("/predict", json={"texts": ["4", "5", "6"]})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {
            "detail": "busy: this request's 3 review(s) and the 3 to be scored before its last "
            "pass --max-queue 4; retry in 1 s"
        }
        # A one-review request waits for one review of each request: it is taken.
        small = worker.submit(["7"])
        response = client.get("/ready")
        assert (response.status_code, response.json()) == (
            503,
            {"detail": "busy: 4 reviews wait, --max-queue 4"},
        )
        assert client.get("/health").json() == {"status": "ok"}
        model.release.set()
        results = [job.future.result(10).tolist() for job in (first, waiting, small)]
        assert results == [[0], [1, 2, 3], [7]]
        assert client.get("/ready").json() == {"status": "ready"}
        assert metric(client, "zimdb_refused_total", reason="busy") == 1
    assert model.calls == [["0"], ["1", "2", "3", "7"]]


def test_a_request_over_the_bound_is_taken_when_nothing_waits():
    with released(turn=2, wait=0.0, max_queue=2) as (_, worker):
        assert worker.submit(["1", "2", "3"]).future.result(10).tolist() == [1, 2, 3]


def test_liveness_holds_while_the_model_is_busy_and_fails_once_it_is_stuck():
    """/health reads the model thread's progress: it answers at once while the thread is busy,
    and fails, as does readiness, once one piece of work has taken --stuck-after seconds."""
    model = HeldModel()
    busy = ModelWorker(lambda: model, batch_size=2)
    with TestClient(create_app(busy)) as client:
        job = busy.submit(["1"])
        assert model.busy.wait(10)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready"}
        model.release.set()
        job.future.result(10)

    model = HeldModel()
    stuck = ModelWorker(lambda: model, batch_size=2)
    with TestClient(create_app(stuck, stuck_after=1e-6)) as client:
        job = stuck.submit(["1"])
        assert model.busy.wait(10)
        for response in (
            client.get("/health"),
            client.get("/ready"),
            client.post("/predict", json={"texts": ["2"]}),
        ):
            assert response.status_code == 503
            assert re.fullmatch(
                r"the model thread is stuck: \d+ s on one piece of work, over --stuck-after "
                r"1e-06; restart the service",
                response.json()["detail"],
            )
        model.release.set()
        job.future.result(10)
        assert metric(client, "zimdb_refused_total", reason="stuck") == 1


def test_metrics_count_requests_reviews_calls_and_name_the_model(tmp_path):
    trained = random_model()
    path = tmp_path / "model.pt"
    path.write_bytes(b"the model's bytes")
    worker = ModelWorker(lambda: trained, batch_size=2)
    with TestClient(create_app(worker, model=model_identity(path, trained))) as client:
        post(client, "/predict", {"texts": ["not bad", "awful", "the end"]})
        post(client, "/predict", {"texts": ["at all"]})
        client.post("/predict", json={"texts": []})
        client.get("/static/app.js")
        client.get("/no/such/page")
        client.request("BREW", "/")
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families["zimdb_model_info"].samples[0].labels == {
            "file": str(path),
            "sha256": hashlib.sha256(b"the model's bytes").hexdigest(),
            "model": "the LSTM, scoring in fp32",
            "precision": "fp32",
        }
        count = lambda route, status, method="GET": metric(  # noqa: E731
            client, "zimdb_http_requests_total", method=method, route=route, status=status
        )
        assert count("/predict", "200", "POST") == 2 and count("/predict", "422", "POST") == 1
        assert count("/static", "200") == 1
        assert count("unmatched", "404") == 1
        assert count("/", "405", "other") == 1  # a made-up method adds no label of its own
        assert metric(client, "zimdb_http_request_seconds_count", route="/predict") == 3
        assert metric(client, "zimdb_reviews_scored_total") == 4
        assert metric(client, "zimdb_model_call_reviews_count") == 2
        assert metric(client, "zimdb_model_call_reviews_sum") == 4
        assert metric(client, "zimdb_queue_wait_seconds_count") == 2
        assert metric(client, "zimdb_queue_reviews") == 0
        assert metric(client, "zimdb_queue_requests") == 0
        assert metric(client, "process_resident_memory_bytes") > 0


def test_readiness_fails_the_moment_the_server_is_told_to_stop():
    worker = ModelWorker(random_model, batch_size=2)
    app = create_app(worker)
    server = serve.Server(uvicorn.Config(app), app)
    with TestClient(app) as client:
        assert client.get("/ready").json() == {"status": "ready"}
        server.handle_exit(signal.SIGTERM, None)
        response = client.get("/ready")
        assert (response.status_code, response.json()) == (
            503,
            {"detail": "shutting down: answering the requests taken, no new ones"},
        )
        assert client.get("/health").json() == {"status": "ok"}  # alive: it is answering
    assert server.should_exit


HELD_SERVER = """
import sys, time
from pathlib import Path
import pandas as pd
from zimdb.errors import run
from zimdb.scoring import files
from zimdb.serve import __main__ as serve

held = Path(sys.argv[1])


class Held:  # scores a text as the number it spells / 100, each call once `held` is gone
    running_note = None

    def describe(self):
        return "a held model"

    def probabilities(self, texts, batch_size):
        (held.parent / "busy").touch()
        while held.exists():
            time.sleep(0.01)
        return texts.astype(float).to_numpy() / 100


files.load = lambda path, device: Held()
run(lambda: serve.main(sys.argv[2:]))
"""


def test_on_sigterm_every_request_taken_is_answered_and_the_server_exits_0(tmp_path):
    """Six requests are in flight, one on the model and five waiting, when SIGTERM arrives: the
    port closes at once, all six get their answers, and the server exits 0."""
    held = tmp_path / "held"
    held.touch()
    port = free_port()
    with open(tmp_path / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", HELD_SERVER, str(held), "--model", str(held)]
            + ["--port", str(port), "--max-wait", "60", "--grace", "90"],
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: status(port, "/health") == 200, proc)

        def ask(i: int) -> tuple[int, float]:
            conn = HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/predict", json.dumps({"texts": [str(i)]}), JSON)
            response = conn.getresponse()
            return response.status, json.loads(response.read())["predictions"][0]["probability"]

        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(ask, 0)
            wait_for((tmp_path / "busy").exists, proc)
            rest = [pool.submit(ask, i) for i in range(1, 6)]
            wait_for(lambda: queued(port) == 5, proc)
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: status(port, "/health") == "ConnectionRefusedError", proc)
            assert not any(f.done() for f in [first, *rest])
            held.unlink()
            answers = [f.result(60) for f in [first, *rest]]
        assert answers == [(200, i / 100) for i in range(6)]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


def status(port: int, route: str) -> int | str:
    """The status of GET `route`, or the name of the error that kept it from an answer."""
    try:
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", route)
        return conn.getresponse().status
    except OSError as e:
        return type(e).__name__


def queued(port: int) -> float:
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    for family in text_string_to_metric_families(conn.getresponse().read().decode()):
        if family.name == "zimdb_queue_requests":
            return family.samples[0].value
    raise AssertionError("no zimdb_queue_requests in /metrics")


def wait_for(condition, proc: subprocess.Popen) -> None:
    """Returns once condition() holds; fails if the server ends or a minute passes first."""
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, f"the server ended with {proc.returncode}"
        assert time.monotonic() < deadline, "waited a minute"
        time.sleep(0.05)


def test_sixteen_concurrent_clients_get_what_offline_scoring_gives(built, server, trained):
    root, _ = built
    reviews = pd.read_parquet(root / "data/raw/test.parquet").text.iloc[:64].tolist()

    def client(k: int) -> list[float]:
        conn = HTTPConnection(*server, timeout=30)
        out = []
        for review in reviews[k::16]:
            conn.request("POST", "/predict", json.dumps({"texts": [review]}), JSON)
            response = conn.getresponse()
            assert response.status == 200
            out.append(json.loads(response.read())["predictions"][0]["probability"])
        return out

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(16)))
    assert time.monotonic() - start < 60
    served = np.empty(len(reviews))
    for k, out in enumerate(answers):
        served[k::16] = out
    np.testing.assert_allclose(served, trained.probabilities(pd.Series(reviews)), atol=1e-6)


def test_poisoned_requests_fail_none_of_the_ordinary_ones_batched_with_them(
    built, server, server_log, trained
):
    """The poisoned-request measurement in small. Lone surrogates once failed every request scored in the
    same batch (250 of 300 ordinary requests among 30 poisoned, at 16 clients): 12 of them
    among 84 ordinary ones, at 8 clients of a real server, all answered as offline scoring."""
    root, _ = built
    reviews = pd.read_parquet(root / "data/raw/test.parquet").text.iloc[:96].tolist()
    poisoned = set(range(3, 96, 8))
    texts = [r[:30] + "\ud800" + r[30:] if i in poisoned else r for i, r in enumerate(reviews)]

    def client(k: int) -> list[tuple[int, int, float]]:
        conn = HTTPConnection(*server, timeout=30)
        out = []
        for i in range(k, len(texts), 8):
            conn.request("POST", "/predict", json.dumps({"texts": [texts[i]]}), JSON)
            response = conn.getresponse()
            body = json.loads(response.read())
            out.append((i, response.status, body.get("predictions", [{}])[0].get("probability")))
        return out

    with ThreadPoolExecutor(8) as pool:
        answers = sorted(a for out in pool.map(client, range(8)) for a in out)
    assert [status for _, status, _ in answers] == [200] * len(texts)
    served = np.array([probability for _, _, probability in answers])
    ordinary = [i for i in range(len(texts)) if i not in poisoned]
    offline = trained.probabilities(pd.Series([reviews[i] for i in ordinary]))
    np.testing.assert_allclose(served[ordinary], offline, atol=1e-6)
    replaced = pd.Series([texts[i].replace("\ud800", "\ufffd") for i in sorted(poisoned)])
    np.testing.assert_allclose(served[sorted(poisoned)], trained.probabilities(replaced), atol=1e-6)
    assert "Traceback" not in server_log.read_text()


def test_health_page_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/explain", "/health", "/ready"} <= set(spec["paths"])
    errors = spec["paths"]["/predict"]["post"]["responses"]
    assert errors["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    page = client.get("/")
    assert page.status_code == 200 and 'id="verdict"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_the_page_needs_nothing_from_outside():
    """No CDN: no address anywhere but the SVG namespace, which names and fetches nothing."""
    for path in sorted(STATIC.iterdir()):
        found = set(re.findall(r"\w+://[^\s\"')]+", path.read_text()))
        assert found <= {"http://www.w3.org/2000/svg"}, (path.name, found)


def run_serve(*args: str) -> tuple[int, str]:
    """`python -m zimdb.serve ARGS` in this process up to where it would start serving."""
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            errors.run(lambda: serve.main(list(args)))
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def test_a_grace_within_the_longest_wait_is_refused():
    """Past --grace uvicorn cuts requests off: a request taken could go unanswered."""
    code, err = run_serve("--max-wait", "30", "--grace", "20")
    assert code == 2
    assert err.splitlines()[-1].endswith("error: --grace (20) must be above --max-wait (30)")


def test_a_missing_or_damaged_model_is_one_line_and_exit_2(built, tmp_path):
    root, _ = built
    missing = tmp_path / "none.pt"
    code, err = run_serve("--model", str(missing))
    assert (code, err) == (
        2,
        f"error: {missing} not found: train the model first (`uv run dvc repro`)\n",
    )
    (tmp_path / "text.pt").write_text("not a model")
    (tmp_path / "cut.pt").write_bytes((root / "data/model.pt").read_bytes()[:5000])
    saved = torch.load(root / "data/model.pt", weights_only=True)
    torch.save({**saved, "state_dict": {}}, tmp_path / "weightless.pt")
    for name, message in [
        ("text.pt", "not a model file, or a damaged one (torch.save writes a zip archive"),
        ("cut.pt", "not a model file, or a damaged one (torch.save writes a zip archive"),
        ("weightless.pt", "cannot rebuild the model (RuntimeError: Error(s) in loading"),
    ]:
        code, err = run_serve("--model", str(tmp_path / name))
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"error: {tmp_path / name}: {message}"), err


def test_the_model_artifact_is_fetched_by_name_and_served(built, tmp_path):
    """dvc artifacts get finds model.pt by its dvc.yaml name, at the version a Git tag
    registers (as `gto register` or DVC Studio would tag it)."""
    root, _ = built
    tag = "zimdb-sentiment@v0.0.1"
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", tag, "-m", tag], root)
    try:
        dvc(
            "artifacts",
            "get",
            str(root),
            "zimdb-sentiment",
            "--out",
            str(tmp_path / "m.pt"),
            cwd=tmp_path,
        )
    finally:
        run(["git", "tag", "-d", tag], root)
    assert (tmp_path / "m.pt").read_bytes() == (root / "data/model.pt").read_bytes()
    fetched, trained = (
        LSTMScorer.load(tmp_path / "m.pt"),
        LSTMScorer.load(root / "data/model.pt"),
    )
    expected = trained.probabilities(pd.Series(["great"]))[0]
    with TestClient(app(fetched)) as client:
        answer = post(client, "/predict", {"texts": ["great"]})["predictions"][0]
    assert answer["probability"] == pytest.approx(expected, abs=1e-6)


def test_the_serving_benchmark_reports_each_run_and_the_overload(built, tmp_path):
    """benchmarks.serve end to end on the small model, its overload run cut to 2 s."""
    root, _ = built
    reviews = pd.read_parquet(root / "data/raw/test.parquet").text.tolist()
    # Sure to hold a review of 250 words and some of 50 or fewer, whatever the sample.
    long = " ".join(" ".join(reviews).split()[:300])
    texts = reviews + [long, "a fine film", "dull and too long"]
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "reviews.parquet")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve", "--model", str(root / "data/model.pt")]
        + ["--reviews", str(tmp_path / "reviews.parquet"), "--n", "64", "--requests", "5"]
        + ["--overload", "2"],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for start in (
        "latency /predict",
        "served, 16 clients x  1 review  per request:",
        "the model alone, in calls of 16 reviews in turn",
        "overload, 2 s: 32 clients x 256 reviews",
        "  heavy: ",
        "  light: ",
        "  /health: ",
        "  /ready: ",
        "  server RSS during the run: ",
        "server stopped by SIGTERM: exit status 0 ",
    ):
        assert any(line.startswith(start) for line in lines), (start, proc.stdout)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs it)")
def test_the_page_shows_the_verdict_in_a_real_browser(server, tmp_path):
    """Chromium loads the page with a review in its address, runs its script (which asks
    /explain) and prints the DOM it built."""
    host, port = server
    url = f"http://{host}:{port}/?text={urllib.parse.quote(MIXED)}"
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    conn = HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/explain", json.dumps({"text": MIXED}), JSON)
    expected = json.loads(conn.getresponse().read())
    verdict = re.search(r'<output id="verdict"[^>]*data-label="(\w+)"[^>]*>(\w+)</output>', dom)
    assert verdict, dom[-3000:]
    assert verdict[1] == expected["label"] and verdict[2] == expected["label"].capitalize()
    shown = re.findall(r'<span data-i="\d+"[^>]*>([^<]*)</span>', dom)
    assert shown == expected["words"]
    assert f"{expected['probability'] * 100:.1f}% positive" in dom
    assert "<polyline" in dom  # the chart of the running verdict
