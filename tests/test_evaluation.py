"""The test metrics' charts, which git keeps for the reference run: small, and still exact."""

import numpy as np
from sklearn import metrics

from zimdb.scoring import evaluation


def test_the_roc_curve_is_thinned_to_its_own_points_and_keeps_its_area():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 25_000)
    probability = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.25, len(labels)), 0, 1)
    full = metrics.roc_curve(labels, probability, drop_intermediate=True)
    assert len(full[0]) > 2 * evaluation.ROC_POINTS  # there is something to thin
    roc = evaluation.roc_curve("m", labels, probability)
    assert len(roc) <= evaluation.ROC_POINTS + 1
    assert roc[["fpr", "tpr"]].iloc[0].tolist() == [0, 0]
    assert roc[["fpr", "tpr"]].iloc[-1].tolist() == [1, 1]
    assert roc.fpr.is_monotonic_increasing and roc.tpr.is_monotonic_increasing
    # Points of the curve itself, not interpolated ones, and the area under them.
    points = set(zip(*full, strict=True))
    assert all(row in points for row in zip(roc.fpr, roc.tpr, roc.threshold, strict=True))
    area = np.trapezoid(roc.tpr, roc.fpr)
    assert abs(area - metrics.roc_auc_score(labels, probability)) < 1e-3


def test_the_confusion_matrix_is_its_four_counts():
    labels = np.array([0, 0, 0, 1, 1])
    verdict = np.array([0, 1, 1, 1, 1])
    cells = evaluation.confusion(labels, verdict)
    assert cells.to_dict("records") == [
        {"actual": "negative", "predicted": "negative", "reviews": 1},
        {"actual": "negative", "predicted": "positive", "reviews": 2},
        {"actual": "positive", "predicted": "negative", "reviews": 0},
        {"actual": "positive", "predicted": "positive", "reviews": 2},
    ]
