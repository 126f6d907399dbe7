"""The whole pipeline through the real `dvc` CLI, in a temporary git + DVC copy of the project,
and the predict command on the model it trains."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SMALL, dvc, run, write_params
from zimdb import errors
from zimdb import predict as predict_command


def test_dvc_repro_builds_model_metrics_and_plots(built):
    root, first = built
    for stage in ("download", "clean", "vocab", "encode", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (root / "data/model.pt").stat().st_size > 0
    scores = json.loads((root / "dvclive/evaluate/metrics.json").read_text())
    assert set(scores) == {"loss", "accuracy", "precision", "recall", "f1", "roc_auc"}
    assert 0 <= scores["accuracy"] <= 1
    curves = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert curves["step"] == 1 and set(curves["val"]) == {"loss", "acc"}  # epochs at steps 0, 1

    shown = json.loads(dvc("metrics", "show", "--json", cwd=root).stdout)
    assert "dvclive/evaluate/metrics.json" in json.dumps(shown)
    dvc("plots", "show", "--out", "plots", cwd=root)
    html = (root / "plots/index.html").read_text()
    for title in ("Learning curves", "Loss", "ROC", "Confusion matrix"):
        assert title in html


def test_second_repro_runs_nothing(built):
    root, _ = built
    second = dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in dvc("status", cwd=root).stdout


def predict(root, *args, check=True) -> subprocess.CompletedProcess:
    """`python -m zimdb.predict ARGS` in `root`, run in this process: the same main() and the
    same error handling, without a second or more of imports per call."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            errors.run(lambda: predict_command.main(list(args)))
        except SystemExit as e:
            code = e.code
    if check and code != 0:
        raise AssertionError(f"predict {args} failed:\n{err.getvalue()}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_predict_equals_what_evaluate_computed(built):
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    evaluated = pd.read_parquet(root / "data/predictions/test.parquet")
    rows = [0, 7, len(raw) // 2 + 1, len(raw) - 1]
    raw.iloc[rows][["text"]].to_parquet(root / "some.parquet")
    predict(root, "--file", "some.parquet", "--output", "out.csv")
    out = pd.read_csv(root / "out.csv")
    assert out.text.tolist() == raw.text.iloc[rows].tolist()
    np.testing.assert_allclose(out.probability, evaluated.probability.iloc[rows], atol=1e-6)
    assert (out.label == np.where(out.probability > 0.5, "positive", "negative")).all()


def test_predict_arguments_and_txt_file(built):
    root, _ = built
    # Once as the command users type; the other tests call the same main() in-process.
    args = run(
        [
            sys.executable,
            "-m",
            "zimdb.predict",
            "A wonderful, moving film.",
            "Dull and far too long.",
        ],
        root,
    )
    table = pd.read_csv(pd.io.common.StringIO(args.stdout))
    assert table.columns.tolist() == ["text", "label", "probability"] and len(table) == 2
    (root / "reviews.txt").write_text("A wonderful, moving film.\nDull and far too long.\n")
    from_file = pd.read_csv(pd.io.common.StringIO(predict(root, "--file", "reviews.txt").stdout))
    pd.testing.assert_frame_equal(from_file, table)


def test_predict_gives_a_defined_answer_for_odd_inputs(built):
    root, _ = built
    odd = [
        "",
        "   \t ",
        "<br /><p></p>",
        "great " * 200_000,
        "zzqx vbnm qwrtp",
        "素晴らしい映画 отличный",
    ]
    pd.DataFrame({"text": odd}).to_parquet(root / "odd.parquet")
    out = pd.read_csv(
        pd.io.common.StringIO(predict(root, "--file", "odd.parquet").stdout), keep_default_na=False
    )
    assert len(out) == len(odd)
    assert out.probability.between(0, 1).all() and out.label.isin(["positive", "negative"]).all()
    # Nothing of the empty, blank, HTML-only and non-Latin reviews survives cleaning: one answer.
    assert out.probability.iloc[[0, 1, 2, 5]].nunique() == 1


def test_predict_errors_are_one_line(built):
    root, _ = built
    missing = predict(root, "--file", "nope.csv", check=False)
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == "error: --file nope.csv does not exist"
    )
    (root / "bad.csv").write_text("review\nfine\n")
    bad = predict(root, "--file", "bad.csv", check=False)
    assert bad.returncode == 2 and "no `text` column (found review)" in bad.stderr
    (root / "data/model.pt").rename(root / "model.bak")
    try:
        untrained = predict(root, "hi", check=False)
    finally:
        (root / "model.bak").rename(root / "data/model.pt")
    assert untrained.returncode == 2 and "(`uv run dvc repro`)" in untrained.stderr


def test_predict_scores_with_the_models_own_vocab_and_settings(built):
    """After params.yaml's encode section changes and vocab.txt is gone, without a rerun,
    predict still scores as evaluate did: model.pt carries what it was trained with."""
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    evaluated = pd.read_parquet(root / "data/predictions/test.parquet")
    params, vocab = (root / "params.yaml").read_text(), (root / "data/vocab.txt").read_bytes()
    write_params(root, **{**SMALL, "encode.max_len": 5, "encode.truncate": "head"})
    (root / "data/vocab.txt").unlink()
    try:
        raw.iloc[:20][["text"]].to_parquet(root / "first.parquet")
        out = pd.read_csv(io.StringIO(predict(root, "--file", "first.parquet").stdout))
    finally:
        (root / "params.yaml").write_text(params)
        (root / "data/vocab.txt").write_bytes(vocab)
    np.testing.assert_allclose(out.probability, evaluated.probability.iloc[:20], atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_predict_output_format_follows_the_extension(built, suffix):
    root, _ = built
    reference = pd.read_csv(io.StringIO(predict(root, "Great film.", "Awful.").stdout))
    predict(root, "Great film.", "Awful.", "--output", f"out{suffix}")
    path = root / f"out{suffix}"
    read = {".csv": pd.read_csv, ".parquet": pd.read_parquet}.get(
        suffix, lambda p: pd.read_json(p, lines=True)
    )
    written = read(path)
    assert written.columns.tolist() == ["text", "label", "probability"]
    assert written.text.tolist() == ["Great film.", "Awful."]
    np.testing.assert_allclose(written.probability, reference.probability, atol=1e-6)


BAD_INPUTS = {
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary.csv: not UTF-8 text"),
    "malformed.csv": (b'text,x\n"a,1\nb,2,3,4\n', "malformed.csv: not a readable CSV file"),
    "empty.csv": (b"", "empty.csv is empty"),
    "header.csv": (b"text\n", "header.csv holds no reviews"),
    "fake.parquet": (b"text\nnot parquet\n", "fake.parquet: not a parquet file"),
    "binary.txt": (b"ok\n\x00\x01\x02\xff", "binary.txt: not text (it holds NUL bytes"),
    "latin1.txt": ("caf\u00e9".encode("latin-1"), "latin1.txt: not UTF-8 text"),
    "reviews.xlsx": (b"PK", "reviews.xlsx: expected a .txt, .csv or .parquet file"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_predict_refuses_unreadable_files_in_one_line(built, name):
    root, _ = built
    data, message = BAD_INPUTS[name]
    (root / name).write_bytes(data)
    result = predict(root, "--file", name, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --file {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("no/such/folder/out.csv", "folder no/such/folder does not exist"),
        ("out.json", "expected a .csv, .parquet, .jsonl file name"),
        ("out", "expected a .csv, .parquet, .jsonl file name"),
    ],
)
def test_predict_refuses_bad_outputs_before_any_work(built, output, message):
    root, _ = built
    result = predict(root, "Great film.", "--output", output, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --output {output}: {message}"
    assert not (root / output).exists() and not list(root.glob("*.tmp"))
