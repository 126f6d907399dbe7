"""Stage baseline: TF-IDF over word n-grams and logistic regression on the train split, the
yardstick the LSTM is read against, scored on the test split as evaluate scores the LSTM.

Writes data/baseline.skops and dvclive/baseline: the same test metrics as evaluate's (beside them
in `dvc metrics show`), val accuracy, and the ROC curve and accuracy by length that the shared
charts draw next to the LSTM's. It learns out of core and scores a batch at a time
(zimdb.scoring.baseline): its memory does not grow with the splits.
"""

from pathlib import Path

import numpy as np
from dvclive import Live
from sklearn.metrics import accuracy_score

from zimdb import params
from zimdb.data.artifacts import count_rows, read_rows, table_batches
from zimdb.errors import run
from zimdb.paths import BASELINE, BASELINE_LIVE, CLEAN
from zimdb.scoring import by_length, evaluation
from zimdb.scoring.baseline import NAME, Baseline, hashing_pool
from zimdb.scoring.verdict import predicted

COLUMNS = {"text": "str", "label": "iu"}


def scored(model: Baseline, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labels of a clean split and the model's P(positive) of each review."""
    labels, probability = [], []
    for batch in table_batches(path, "clean", COLUMNS):
        labels.append(batch.label.to_numpy())
        probability.append(model.cleaned_probabilities(batch.text))
    return np.concatenate(labels), np.concatenate(probability)


def main() -> None:
    p = params.load("baseline")
    train = CLEAN / "train.parquet"
    with hashing_pool() as pool:
        model = Baseline.build(p, pool).fit(
            lambda: table_batches(train, "clean", COLUMNS),
            count_rows(train, "clean"),
            p,
            BASELINE.parent,
        )
        val_labels, val_probability = scored(model, CLEAN / "val.parquet")
        labels, probability = scored(model, CLEAN / "test.parquet")
        sample = by_length.sample(len(labels))
        cleaned = read_rows(CLEAN / "test.parquet", "clean", "text", sample)
        with Live(str(BASELINE_LIVE), dvcyaml=None, save_dvc_exp=False) as live:
            scores = evaluation.log(
                live, NAME, labels, probability, sample, cleaned, model.probabilities
            )
            val_acc = float(accuracy_score(val_labels, predicted(val_probability)))
            live.log_metric("val_acc", val_acc, plot=False)  # a column with the LSTM's (train's)
    model.save(BASELINE)
    print(
        f"val: accuracy {val_acc:.4f}; test: "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )


if __name__ == "__main__":
    run(main)
