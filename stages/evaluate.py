"""Stage evaluate: the trained model on the test split.

Writes dvclive/evaluate/metrics.json (loss, accuracy, precision, recall, f1, roc_auc, and
accuracy by review length), the ROC curve, accuracy by length and the confusion matrix (classes
by name) under dvclive/evaluate/plots, and every test review's probability to
data/predictions/test.parquet.
"""

import pandas as pd
import torch
from dvclive import Live

from zimdb import evaluation, params
from zimdb.artifacts import read_encoded, read_table, write_table
from zimdb.batching import Encoded
from zimdb.device import resolve
from zimdb.errors import run
from zimdb.inference import logits
from zimdb.paths import CLEAN, ENCODED, EVALUATE_LIVE, MODEL, PREDICTIONS
from zimdb.trained_model import TrainedModel
from zimdb.verdict import CLASSES, THRESHOLD

NAME = "LSTM"


def main() -> None:
    p = params.load("evaluate")
    device = resolve(p.device, "params.yaml: evaluate.device")
    trained = TrainedModel.load(MODEL, device)
    test = Encoded.from_records(read_encoded(ENCODED / "test.npy", len(trained.vocab)), device)
    cleaned = read_table(CLEAN / "test.parquet", "clean", {"text": "str"}).text  # same rows
    prob = torch.sigmoid(logits(trained.model, test, p.batch_size, trained.autocast()))
    prob, y = prob.cpu().numpy(), test.labels.cpu().numpy().astype(int)
    pred = (prob > THRESHOLD).astype(int)
    with Live(str(EVALUATE_LIVE), dvcyaml=None, save_dvc_exp=False) as live:
        scores = evaluation.log(
            live, NAME, cleaned, y, prob, lambda texts: trained.probabilities(texts, p.batch_size)
        )
        live.log_sklearn_plot("confusion_matrix", CLASSES[y], CLASSES[pred])
    write_table(pd.DataFrame({"label": y, "probability": prob, "prediction": pred}), PREDICTIONS)
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    run(main)
