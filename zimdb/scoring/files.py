"""Either model file loaded as a Scorer, for the commands that take --model (predict, serve):
the LSTM's model.pt or the baseline's .skops. Both are zip archives; skops' holds a schema.json.
"""

import zipfile
from pathlib import Path

import torch

from zimdb.scoring.lstm import LSTMScorer
from zimdb.scoring.scorer import Scorer


def is_baseline_file(path: Path) -> bool:
    """Whether `path` is a skops file (a zip archive with skops' schema.json), not model.pt."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "schema.json" in archive.namelist()


def load(path: str | Path, device: torch.device | str = "cpu") -> Scorer:
    """The model in `path` (the LSTM on `device`; the baseline runs on the CPU)."""
    path = Path(path)
    if path.is_file() and is_baseline_file(path):
        # Imported only for a baseline: scikit-learn and skops add about 3 s to the start of
        # predict and serve, which scoring with the LSTM never needs.
        from zimdb.scoring.baseline import Baseline

        return Baseline.load(path)
    return LSTMScorer.load(path, device)
