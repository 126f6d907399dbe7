"""Stage baseline: TF-IDF over word n-grams and logistic regression on the train split, the
yardstick the LSTM is read against, scored on the test split as evaluate scores the LSTM.

Writes data/baseline.skops and dvclive/baseline: the same test metrics as evaluate's (beside them
in `dvc metrics show`), val accuracy, and the ROC curve and accuracy by length that the shared
charts draw next to the LSTM's.
"""

from dvclive import Live
from sklearn.metrics import accuracy_score

from zimdb import params
from zimdb.data.artifacts import read_table
from zimdb.errors import run
from zimdb.paths import BASELINE, BASELINE_LIVE, CLEAN
from zimdb.scoring import evaluation
from zimdb.scoring.baseline import NAME, Baseline
from zimdb.scoring.verdict import predicted

COLUMNS = {"text": "str", "label": "iu"}


def main() -> None:
    p = params.load("baseline")
    train, val, test = (
        read_table(CLEAN / f"{split}.parquet", "clean", COLUMNS)
        for split in ("train", "val", "test")
    )
    model = Baseline.build(p).fit(train.text, train.label.to_numpy())
    val_acc = float(accuracy_score(val.label, predicted(model.probabilities(val.text))))
    prob = model.probabilities(test.text)
    with Live(str(BASELINE_LIVE), dvcyaml=None, save_dvc_exp=False) as live:
        scores = evaluation.log(
            live, NAME, test.text, test.label.to_numpy(), prob, model.probabilities
        )
        live.log_metric("val_acc", val_acc, plot=False)  # a column with the LSTM's (train's)
    model.save(BASELINE)
    print(
        f"val: accuracy {val_acc:.4f}; test: "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )


if __name__ == "__main__":
    run(main)
