"""Stage evaluate: the trained model on the test split.

Writes dvclive/evaluate/metrics.json (loss, accuracy, f1, roc_auc), the ROC curve, accuracy by
review length and the confusion matrix (classes by name) under dvclive/evaluate/plots, and every
test review's probability to data/predictions/test.parquet. The test split is scored from its
memory-mapped ids a batch at a time; accuracy by length reads the texts of a fixed sample.
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from dvclive import Live

from zimdb import params
from zimdb.data.artifacts import open_encoded, read_columns, read_rows, write_table
from zimdb.errors import PipelineError, run
from zimdb.model.batches import Encoded
from zimdb.model.device import resolve
from zimdb.paths import CLEAN, ENCODED, EVALUATE_LIVE, MODEL, PREDICTIONS
from zimdb.scoring import by_length, evaluation
from zimdb.scoring.lstm import LSTMScorer
from zimdb.scoring.verdict import predicted

NAME = "LSTM"


def mismatch(clean: np.ndarray, encoded: np.ndarray) -> str | None:
    """How the clean and the encoded test split's labels differ, or None when they agree."""
    if len(clean) != len(encoded):
        return f"{len(clean)} and {len(encoded)} rows"
    wrong = int((clean != encoded).sum())
    return f"labels differ in {wrong} of {len(encoded)} rows" if wrong else None


def main() -> None:
    p = params.load("evaluate")
    device = resolve(p.device, "params.yaml: evaluate.device")
    trained = LSTMScorer.load(MODEL, device)
    encoding = trained.file.encoding
    records = open_encoded(ENCODED / "test.npy", len(encoding.vocab), encoding.max_len)
    test = Encoded.from_records(records, device)
    y = test.labels.astype(int)
    clean = read_columns(CLEAN / "test.parquet", "clean", {"label": "iu"}).label.to_numpy()
    if differ := mismatch(clean, y):
        raise PipelineError(
            f"{CLEAN / 'test.parquet'} and {ENCODED / 'test.npy'} hold different reviews "
            f"({differ}); rerun `uv run dvc repro encode`"
        )
    test_logits = trained.logits(test, p.batch_size)
    labels = torch.from_numpy(test.labels).to(test_logits.device)
    loss = F.binary_cross_entropy_with_logits(test_logits, labels).item()
    prob = torch.sigmoid(test_logits).cpu().numpy()
    pred = predicted(prob)
    # The cut reviews are scored from the clean text of a sample, the rest from the ids.
    sample = by_length.sample(len(y))
    cleaned = read_rows(CLEAN / "test.parquet", "clean", "text", sample)
    with Live(str(EVALUATE_LIVE), dvcyaml=None, save_dvc_exp=False) as live:
        scores = evaluation.log(
            live,
            NAME,
            y,
            prob,
            sample,
            cleaned,
            lambda texts: trained.probabilities(texts, p.batch_size),
            loss,
        )
        live.log_plot("confusion_matrix", evaluation.confusion(y, pred), x="predicted", y="actual")
    write_table(pd.DataFrame({"label": y, "probability": prob, "prediction": pred}), PREDICTIONS)
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    run(main)
