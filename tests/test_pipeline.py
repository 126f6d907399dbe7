"""The whole pipeline through the real `dvc` CLI, in a temporary git + DVC copy of the project."""

import json

from tests.conftest import dvc

SMALL = {
    "download.source": "aclimdb",
    "download.limit": 200,
    "train.epochs": 2,
    "train.hidden_dim": 16,
    "train.embedding_dim": 16,
    "vocab.size": 500,
    "encode.max_len": 64,
}


def test_dvc_repro_builds_model_metrics_and_plots_then_runs_nothing(project, shared_archive):
    root = project(**SMALL, **{"download.archive": str(shared_archive)})
    first = dvc("repro", cwd=root)
    for stage in ("download", "clean", "vocab", "encode", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (root / "data/model.pt").stat().st_size > 0
    scores = json.loads((root / "dvclive/evaluate/metrics.json").read_text())
    assert set(scores) == {"loss", "accuracy", "precision", "recall", "f1", "roc_auc"}
    assert 0 <= scores["accuracy"] <= 1
    curves = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert curves["step"] == 1 and "val" in curves  # two epochs logged: steps 0 and 1

    shown = json.loads(dvc("metrics", "show", "--json", cwd=root).stdout)
    assert "dvclive/evaluate/metrics.json" in json.dumps(shown)
    dvc("plots", "show", "--out", "plots", cwd=root)
    html = (root / "plots/index.html").read_text()
    for title in ("Learning curves", "Loss", "ROC", "Confusion matrix"):
        assert title in html

    second = dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    status = dvc("status", cwd=root)
    assert "Data and pipelines are up to date." in status.stdout
