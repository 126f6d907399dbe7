"""Either model file, ready to score raw reviews: for the commands that take `--model` (predict,
serve). The LSTM's model.pt and the baseline's .skops are both zip archives; skops' holds a
schema.json."""

from pathlib import Path

import torch

from zimdb.baseline import Baseline, is_baseline_file
from zimdb.trained_model import TrainedModel

Scorer = TrainedModel | Baseline  # each has probabilities(texts, batch_size) and describe()


def load(path: str | Path, device: torch.device | str = "cpu") -> Scorer:
    """The model in `path` (the LSTM on `device`; the baseline runs on the CPU)."""
    path = Path(path)
    if path.is_file() and is_baseline_file(path):
        return Baseline.load(path)
    return TrainedModel.load(path, device)
