"""Stage evaluate: the trained model on the test split.

Writes dvclive/evaluate/metrics.json (loss, accuracy, precision, recall, f1, roc_auc), the ROC
curve and the confusion matrix (classes by name) under dvclive/evaluate/plots, and every test
review's probability to data/predictions/test.parquet.
"""

import pandas as pd
import torch
import torch.nn.functional as F
from dvclive import Live
from sklearn import metrics

from zimdb import params
from zimdb.artifacts import read_encoded, write_table
from zimdb.batching import Encoded
from zimdb.device import resolve
from zimdb.errors import run
from zimdb.inference import logits
from zimdb.paths import ENCODED, EVALUATE_LIVE, MODEL, PREDICTIONS
from zimdb.trained_model import CLASSES, THRESHOLD, TrainedModel


def main() -> None:
    p = params.load("evaluate")
    device = resolve(p.device, "params.yaml: evaluate.device")
    trained = TrainedModel.load(MODEL, device)
    records = read_encoded(ENCODED / "test.npy", len(trained.vocab))
    test = Encoded.from_records(records, device)
    test_logits = logits(trained.model, test, p.batch_size, trained.autocast())
    loss = F.binary_cross_entropy_with_logits(test_logits, test.labels).item()
    prob = torch.sigmoid(test_logits).cpu().numpy()
    y = test.labels.cpu().numpy().astype(int)
    pred = (prob > THRESHOLD).astype(int)
    scores = {
        "loss": loss,
        "accuracy": metrics.accuracy_score(y, pred),
        "precision": metrics.precision_score(y, pred, zero_division=0),
        "recall": metrics.recall_score(y, pred, zero_division=0),
        "f1": metrics.f1_score(y, pred, zero_division=0),
        "roc_auc": metrics.roc_auc_score(y, prob),
    }
    with Live(str(EVALUATE_LIVE), dvcyaml=None, save_dvc_exp=False) as live:
        for name, value in scores.items():
            live.log_metric(name, value, plot=False)
        live.log_sklearn_plot("roc", y, prob)
        live.log_sklearn_plot("confusion_matrix", CLASSES[y], CLASSES[pred])
    write_table(pd.DataFrame({"label": y, "probability": prob, "prediction": pred}), PREDICTIONS)
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    run(main)
