"""The whole pipeline through the real `dvc` CLI, in a temporary git + DVC copy of the project,
and the predict command on the model it trains."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd

from stages import predict as predict_stage
from tests.conftest import SMALL, dvc, run
from zimdb import errors


def test_dvc_repro_builds_model_metrics_and_plots(built):
    root, first = built
    for stage in ("download", "clean", "vocab", "encode", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (root / "data/model.pt").stat().st_size > 0
    scores = json.loads((root / "dvclive/evaluate/metrics.json").read_text())
    assert set(scores) == {"loss", "accuracy", "precision", "recall", "f1", "roc_auc"}
    assert 0 <= scores["accuracy"] <= 1
    curves = json.loads((root / "dvclive/train/metrics.json").read_text())
    # dvclive's step is the epoch number: SMALL's 2 epochs are steps 1 and 2.
    assert SMALL["train.epochs"] == 2
    assert curves["step"] == 2 and set(curves["val"]) == {"loss", "acc"}

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
    """`python -m stages.predict ARGS` in `root`, run in this process: the same main() and the
    same error handling, without a second or more of imports per call."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            errors.run(lambda: predict_stage.main(list(args)))
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
            "stages.predict",
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
    assert untrained.returncode == 2 and "run `dvc repro`" in untrained.stderr
