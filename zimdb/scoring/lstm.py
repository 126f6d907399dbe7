"""A model file ready to score raw reviews exactly as evaluate scores the test split.

Loading it flushes denormals on a CPU and chooses the precision it scores in once: the one it
was trained in where the device runs that natively, fp32 otherwise. evaluate, predict and the
web service all score through it, so on one machine they give the same numbers.
"""

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zimdb.data import text
from zimdb.model.batches import Encoded
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.model.precision import Precision, flush_denormals, for_scoring


@dataclass
class TrainedModel(ModelFile):
    scoring: Precision  # what it scores in

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "TrainedModel":
        return cls.from_file(ModelFile.load(path, device))

    @classmethod
    def from_file(cls, file: ModelFile) -> "TrainedModel":
        """`file` ready to score on its model's device: denormals flushed, precision chosen."""
        flush_denormals(file.device)
        scoring = for_scoring(file.precision, file.device)
        return cls(**{f.name: getattr(file, f.name) for f in fields(file)}, scoring=scoring)

    def autocast(self):
        return self.scoring.autocast()

    def describe(self) -> str:
        return f"the LSTM, scoring in {self.scoring.name}"

    def encode(self, texts: pd.Series) -> Encoded:
        """Raw reviews cleaned and encoded as the pipeline does, on the model's device."""
        ids, lengths = text.encode(text.clean(texts), self.vocab, self.max_len, self.truncate)
        return Encoded(
            ids=torch.from_numpy(ids).to(self.device),
            lengths=torch.from_numpy(lengths).to(self.device),
            labels=torch.zeros(len(ids), device=self.device),
            lengths_np=lengths,
        )

    def probabilities(self, texts: pd.Series, batch_size: int = 128) -> np.ndarray:
        """P(positive) of each raw review."""
        out = logits(
            self.model, self.encode(texts.reset_index(drop=True)), batch_size, self.autocast()
        )
        return torch.sigmoid(out).cpu().numpy()
