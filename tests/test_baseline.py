"""The baseline beside the LSTM: its stage's metrics, its file read without running code from
it, predict and the service scoring with it, and accuracy by length computed alike for both."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import make_pipeline

from tests.conftest import ROOT
from tests.test_pipeline import predict
from zimdb.errors import PipelineError
from zimdb.scoring import by_length, files
from zimdb.scoring.baseline import NAME, Baseline
from zimdb.scoring.lstm import LSTMScorer
from zimdb.serve.app import create_app
from zimdb.serve.worker import ModelWorker


@pytest.fixture(scope="module")
def baseline(built) -> Baseline:
    root, _ = built
    return Baseline.load(root / "data/baseline.skops")


def test_predict_with_the_baseline_gives_its_test_accuracy_from_raw_text(built):
    """Raw reviews through predict --model: cleaned as the pipeline cleans, the stage's own
    numbers (its stage scored the cleaned split)."""
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    raw[["text"]].to_parquet(root / "raw-test.parquet")
    predict(
        root, "--model", "data/baseline.skops", "--file", "raw-test.parquet", "--output", "b.csv"
    )
    out = pd.read_csv(root / "b.csv")
    accuracy = ((out.probability > 0.5) == (raw.label == 1)).mean()
    logged = json.loads((root / "dvclive/baseline/metrics.json").read_text())
    assert accuracy == pytest.approx(logged["accuracy"], abs=1e-12)


def test_either_model_file_loads_as_its_scorer(built):
    root, _ = built
    assert isinstance(files.load(root / "data/baseline.skops"), Baseline)
    assert isinstance(files.load(root / "data/model.pt"), LSTMScorer)


def test_the_service_serves_the_baseline(built, baseline):
    root, _ = built
    with TestClient(create_app(ModelWorker(lambda: baseline, batch_size=16))) as client:
        texts = ["A wonderful film, I loved it.", "Awful. Dreadful acting."]
        got = client.post("/predict", json={"texts": texts}).json()["predictions"]
        expected = baseline.probabilities(pd.Series(texts))
        np.testing.assert_allclose([p["probability"] for p in got], expected, atol=1e-12)
        read = client.post("/explain", json={"text": "A wonderful zzqx film"}).json()
        assert read["words"] == ["a", "wonderful", "zzqx", "film"]
        # Unknown: a word in fewer than baseline.min_df (2) train reviews, whose feature weighs
        # nothing.
        train = pd.read_parquet(root / "data/clean/train.parquet").text.str.split()
        reviews_with = train.map(set).explode().value_counts()
        assert read["unknown"] == [reviews_with.get(w, 0) < 2 for w in read["words"]]
        assert read["unknown"][2] and read["running"] is None and NAME in read["running_note"]
        assert (read["truncate"], read["max_len"], read["cut"]) == (None, None, 0)
        assert read["probability"] == pytest.approx(
            baseline.probabilities(pd.Series(["A wonderful zzqx film"]))[0]
        )


class Planted(BaseEstimator, TransformerMixin):
    """A type of nobody's library: loading it would mean running this module's code."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x


def test_a_baseline_file_with_untrusted_types_is_refused(tmp_path, baseline):
    skops.io.dump(make_pipeline(Planted(), baseline.pipeline[1]), tmp_path / "planted.skops")
    with pytest.raises(PipelineError, match=r"planted.skops: cannot read the baseline \(Untrusted"):
        Baseline.load(tmp_path / "planted.skops")


def test_a_damaged_or_missing_baseline_file_is_one_line(tmp_path, built):
    root, _ = built
    data = (root / "data/baseline.skops").read_bytes()
    (tmp_path / "cut.skops").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=r"cut.skops: cannot read the baseline"):
        Baseline.load(tmp_path / "cut.skops")
    with pytest.raises(PipelineError, match=r"nope.skops not found"):
        Baseline.load(tmp_path / "nope.skops")


def test_cuts_keep_the_first_or_last_k_words():
    reviews = pd.Series(["a b c d e", "x y", "", "one"])
    assert by_length.cut(reviews, 2, "first").tolist() == ["a b", "x y", "", "one"]
    assert by_length.cut(reviews, 2, "last").tolist() == ["d e", "x y", "", "one"]


def test_length_rows_name_every_cut_and_group():
    # The third review turns from bad to good: read from its start it is wrong, from its end right.
    reviews = pd.Series(["good " * 5, "bad " * 150, "bad " * 225 + "good " * 225, "bad bad"])
    reviews, labels = reviews.str.strip(), np.array([1, 0, 1, 0])
    score = lambda texts: texts.str.startswith("good").to_numpy(float)  # noqa: E731
    rows = by_length.rows("m", reviews, labels, score(reviews), score)
    assert len({tuple(sorted(row)) for row in rows}) == 1  # the same keys in every row
    accuracy = {row["metric"]: row["accuracy"] for row in rows}
    for k in by_length.CUTS:
        assert accuracy[f"first_{k}"] == 0.75
        assert accuracy[f"last_{k}"] == 1.0
    whole = {name: v for name, v in accuracy.items() if "whole" in name}
    # 5 and 2 words, 150, 450: the 200-399 group is empty and left out.
    assert whole == {"whole_1-99": 1.0, "whole_100-199": 1.0, "whole_400+": 0.0}
    assert len(accuracy) == len(rows) == 2 * len(by_length.CUTS) + 3
    assert [r["words"] for r in rows if r["read"] == "whole reviews"] == [3, 150, 450]


def test_predict_and_serve_import_scikit_learn_only_for_a_baseline():
    # scikit-learn and skops add about 3 s to their start, which the LSTM never needs.
    script = "import sys, zimdb.predict, zimdb.serve.__main__; print(sorted({'sklearn', 'skops'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
