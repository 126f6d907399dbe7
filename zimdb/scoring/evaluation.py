"""What every model's stage reports on the test split, so that the models sit side by side in
`dvc metrics show` and on the same charts: loss, accuracy, precision, recall, F1 and ROC AUC,
the ROC curve, and accuracy by review length (zimdb.scoring.by_length)."""

from collections.abc import Callable

import numpy as np
import pandas as pd
from dvclive import Live
from sklearn import metrics

from zimdb.scoring import by_length
from zimdb.scoring.verdict import predicted


def scores(
    labels: np.ndarray, probability: np.ndarray, loss: float | None = None
) -> dict[str, float]:
    """The test metrics; `loss` is the mean cross-entropy where the model has it exactly (from
    its logits), else it is taken from `probability`, which float32 rounds to 0 or 1 for a
    confident review."""
    verdict = predicted(probability)
    return {
        "loss": metrics.log_loss(labels, probability, labels=[0, 1]) if loss is None else loss,
        "accuracy": metrics.accuracy_score(labels, verdict),
        "precision": metrics.precision_score(labels, verdict, zero_division=0),
        "recall": metrics.recall_score(labels, verdict, zero_division=0),
        "f1": metrics.f1_score(labels, verdict, zero_division=0),
        "roc_auc": metrics.roc_auc_score(labels, probability),
    }


def log(
    live: Live,
    model: str,
    cleaned: pd.Series,
    labels: np.ndarray,
    probability: np.ndarray,
    score: Callable[[pd.Series], np.ndarray],
    loss: float | None = None,
) -> dict[str, float]:
    """`model`'s test metrics, ROC curve and accuracy by length into `live`; the metrics.

    `probability` is its P(positive) of each whole cleaned review, `score` gives it for any
    cleaned texts (the reviews cut short); `loss` as scores() takes it."""
    chart = by_length.rows(model, cleaned, labels, probability, score)
    logged = scores(labels, probability, loss) | by_length.metrics(chart)
    for name, value in logged.items():
        live.log_metric(name, value, plot=False)
    fpr, tpr, threshold = metrics.roc_curve(labels, probability, drop_intermediate=True)
    roc = pd.DataFrame({"model": model, "fpr": fpr, "tpr": tpr, "threshold": threshold})
    # The first point's threshold is infinite, which JSON has no number for.
    live.log_plot("roc", roc.replace(np.inf, 1.0), x="fpr", y="tpr")
    live.log_plot("by_length", chart, x="words", y="accuracy")
    return logged
