"""What every model's stage reports on the test split, so that the models sit side by side in
`dvc metrics show` and on the same charts: the headline metrics (loss, accuracy, F1, ROC AUC),
the ROC curve, and accuracy by review length (zimdb.scoring.by_length), a chart whose file is
the only record of it: as metrics, its ten figures a model buried the headline in `dvc metrics
show` (29 columns, 485 characters wide) and in `dvc metrics diff`."""

from collections.abc import Callable

import numpy as np
import pandas as pd
from dvclive import Live
from sklearn import metrics

from zimdb.scoring import by_length
from zimdb.scoring.verdict import CLASSES, predicted

ROC_POINTS = 400


def scores(
    labels: np.ndarray, probability: np.ndarray, loss: float | None = None
) -> dict[str, float]:
    """The headline test metrics; `loss` is the mean cross-entropy where the model has it
    exactly (from its logits), else it is taken from `probability`, which float32 rounds to 0 or
    1 for a confident review. Precision and recall are left to the confusion matrix's chart."""
    verdict = predicted(probability)
    return {
        "loss": metrics.log_loss(labels, probability, labels=[0, 1]) if loss is None else loss,
        "accuracy": metrics.accuracy_score(labels, verdict),
        "f1": metrics.f1_score(labels, verdict, zero_division=0),
        "roc_auc": metrics.roc_auc_score(labels, probability),
    }


def confusion(labels: np.ndarray, verdict: np.ndarray) -> pd.DataFrame:
    """The confusion matrix as its four counts, classes by name: the chart's template sums
    them (a row per review would put 25,000 rows, 1.9 MB, in git)."""
    cells = pd.DataFrame({"actual": CLASSES[labels], "predicted": CLASSES[verdict]})
    counts = cells.value_counts().reindex(
        pd.MultiIndex.from_product([CLASSES, CLASSES], names=["actual", "predicted"]),
        fill_value=0,
    )
    return counts.rename("reviews").reset_index()


def roc_curve(model: str, labels: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    """The ROC curve's own points, at most one per 1/ROC_POINTS of its length (fpr + tpr): git
    keeps these files (the committed reference run), where 25,000 reviews gave 3,744 points."""
    fpr, tpr, threshold = metrics.roc_curve(labels, probability, drop_intermediate=True)
    steps = np.searchsorted(fpr + tpr, np.linspace(0, 2, ROC_POINTS + 1))
    keep = np.unique(np.append(steps.clip(0, len(fpr) - 1), len(fpr) - 1))
    return pd.DataFrame(
        {"model": model, "fpr": fpr[keep], "tpr": tpr[keep], "threshold": threshold[keep]}
    )


def log(
    live: Live,
    model: str,
    labels: np.ndarray,
    probability: np.ndarray,
    sample: np.ndarray,
    cleaned: pd.Series,
    score: Callable[[pd.Series], np.ndarray],
    loss: float | None = None,
) -> dict[str, float]:
    """`model`'s test metrics, ROC curve and accuracy by length into `live`; the metrics.

    `probability` is its P(positive) of each whole test review, `labels` their labels; accuracy
    by length is measured on the rows `sample` (by_length.sample), whose cleaned texts are
    `cleaned`, and `score` gives P(positive) of any cleaned texts (the reviews cut short);
    `loss` as scores() takes it."""
    chart = by_length.rows(model, cleaned, labels[sample], probability[sample], score)
    logged = scores(labels, probability, loss)
    for name, value in logged.items():
        live.log_metric(name, value, plot=False)
    roc = roc_curve(model, labels, probability)
    # The first point's threshold is infinite, which JSON has no number for.
    live.log_plot("roc", roc.replace(np.inf, 1.0), x="fpr", y="tpr")
    live.log_plot("by_length", chart, x="words", y="accuracy")
    return logged
