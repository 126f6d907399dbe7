"""The web service: the numbers predict and evaluate give, bad input refused in JSON, the running
verdict, requests batched on one model thread, a bounded load on a real server, and the page in
a real browser."""

import contextlib
import io
import json
import logging
import re
import shutil
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
from fastapi.testclient import TestClient

from tests.conftest import dvc, model_config, python_env, run
from zimdb import errors
from zimdb.data import text
from zimdb.data.encoding import Encoding
from zimdb.model.file import ModelFile
from zimdb.model.lstm import SentimentLSTM
from zimdb.scoring.lstm import LSTMScorer
from zimdb.serve import __main__ as serve
from zimdb.serve.app import MAX_BODY, STATIC, create_app
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
        proc.wait(timeout=30)


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


def test_requests_that_queue_while_the_model_is_busy_are_scored_together():
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2, gather=4, wait=0.0)
    try:
        first = worker.submit(["0"])
        assert model.busy.wait(10)
        queued = [worker.submit([str(i)]) for i in range(1, 4)]
        queued.append(worker.submit(["4", "5"]))  # would overflow a batch of 4: the next one
        other = worker.call(lambda: "ran")
        last = worker.submit(["6"])
        model.release.set()
        results = [f.result(10) for f in [first, *queued, last]]
        assert other.result(10) == "ran"
    finally:
        worker.stop()
    assert model.calls == [["0"], ["1", "2", "3"], ["4", "5"], ["6"]]
    assert [r.tolist() for r in results] == [[0], [1], [2], [3], [4, 5], [6]]


def test_a_failing_request_fails_alone_when_scored_with_others():
    """A batch that fails is scored again request by request: only the culprit fails."""
    model = SlowModel()
    worker = ModelWorker(lambda: model, batch_size=2, gather=8, wait=0.0)
    try:
        first = worker.submit(["0"])
        assert model.busy.wait(10)
        before, poisoned, after = (worker.submit(t) for t in (["1"], ["poison"], ["2", "3"]))
        model.release.set()
        assert first.result(10).tolist() == [0]
        assert before.result(10).tolist() == [1] and after.result(10).tolist() == [2, 3]
        with pytest.raises(ValueError, match="poison"):
            poisoned.result(10)
    finally:
        worker.stop()
    assert model.calls == [["0"], ["1", "poison", "2", "3"], ["1"], ["poison"], ["2", "3"]]


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


def test_a_model_that_does_not_answer_is_a_503_and_health_says_so(monkeypatch):
    trained = random_model()
    busy, release, scored, score = threading.Event(), threading.Event(), [], trained.probabilities

    def probabilities(texts: pd.Series, batch_size: int = 256) -> np.ndarray:
        scored.append(texts.tolist())
        busy.set()
        assert release.wait(10)
        return score(texts, batch_size)

    monkeypatch.setattr(trained, "probabilities", probabilities)
    worker = ModelWorker(lambda: trained, batch_size=2)
    with TestClient(create_app(worker, timeout=0.2, health_timeout=0.5)) as client:
        first = worker.submit(["not bad"])
        assert busy.wait(10)
        response = client.post("/predict", json={"texts": ["awful"]})
        assert response.status_code == 503
        assert response.json() == {"detail": "the model did not answer within 0.2 s; try later"}
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json() == {"detail": "the model did not answer within 0.5 s; try later"}
        release.set()
        first.result(10)
        assert client.get("/health").json() == {"status": "ok"}
        assert post(client, "/predict", {"texts": ["the end"]})["predictions"][0]["label"]
    assert scored == [["not bad"], ["the end"]]  # the request given up on was dropped unscored


def test_health_and_every_request_are_a_503_once_the_model_thread_has_stopped():
    worker = ModelWorker(random_model, batch_size=2)
    stopped = {"detail": "the model thread has stopped; restart the service"}
    with TestClient(create_app(worker)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        worker.stop()
        # One at a time: a request to a stopped thread once waited for ever.
        for ask in (
            lambda: client.get("/health"),
            lambda: client.post("/predict", json={"texts": ["fine"]}),
            lambda: client.post("/explain", json={"text": "fine"}),
        ):
            response = ask()
            assert (response.status_code, response.json()) == (503, stopped)


def test_a_lone_request_is_not_kept_waiting_for_company():
    model = SlowModel()
    model.release.set()
    worker = ModelWorker(lambda: model, batch_size=2, wait=60.0)
    try:
        for i in range(3):  # would time out, had it waited the minute for others
            assert worker.submit([str(i)]).result(10).tolist() == [i]
    finally:
        worker.stop()


def test_the_model_is_loaded_and_run_on_one_thread_of_its_own():
    threads = set()

    def load():
        threads.add(threading.current_thread())
        return SlowModel()

    worker = ModelWorker(load, batch_size=2)
    worker.trained.release.set()
    try:
        worker.submit(["1"]).result(10)
        threads.add(worker.call(threading.current_thread).result(10))
    finally:
        worker.stop()
    assert threads == {worker.thread} and not worker.thread.is_alive()


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
    """Issue 19's measurement in small. Lone surrogates once failed every request scored in the
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
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/explain", "/health"} <= set(spec["paths"])
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
