"""The LSTM's model file ready to score raw reviews exactly as evaluate scores the test split.

Loading it prepares the CPU (denormals flushed, the allocator kept from churning) and chooses
once the precision it scores in: the one it was trained in where the device runs that
natively, fp32 otherwise. evaluate, predict and the web service all score through it, so on one
machine they give the same numbers.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zimdb.data import text
from zimdb.data.text import UNK
from zimdb.model.batches import Encoded
from zimdb.model.device import prepare
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.model.precision import Precision, for_scoring
from zimdb.scoring.scorer import Reading


@dataclass
class LSTMScorer:
    file: ModelFile
    scoring: Precision  # what it scores in
    running_note = None  # its verdict at every word is the verdict on the words up to it

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "LSTMScorer":
        prepare(torch.device(device))  # before the weights: they too come from the kept heap
        return cls.of(ModelFile.load(path, device))

    @classmethod
    def of(cls, file: ModelFile) -> "LSTMScorer":
        """`file` ready to score on its model's device, prepared, its precision chosen."""
        prepare(file.device)
        return cls(file, for_scoring(file.precision, file.device))

    def describe(self) -> str:
        return f"the LSTM, scoring in {self.scoring.name}"

    def encode(self, texts: pd.Series) -> Encoded:
        """Raw reviews cleaned and encoded as the pipeline does, on the model's device."""
        ids, lengths, _ = self.file.encoding.encode(text.clean(texts))
        return Encoded.from_arrays(ids, lengths, np.zeros(len(ids)), self.file.device)

    def logits(self, data: Encoded, batch_size: int) -> torch.Tensor:
        """The verdict's logit for every row of `data`, in its precision."""
        return logits(self.file.model, data, batch_size, self.scoring.autocast())

    def probabilities(self, texts: pd.Series, batch_size: int = 128) -> np.ndarray:
        """P(positive) of each raw review."""
        out = self.logits(self.encode(texts.reset_index(drop=True)), batch_size)
        return torch.sigmoid(out).cpu().numpy()

    @torch.no_grad()
    def read(self, review: str) -> Reading:
        """The words the model reads of `review` and its running verdict: the sigmoid of the
        verdict at every word t, from one pass over the review."""
        encoding, model = self.file.encoding, self.file.model
        cleaned = text.clean(pd.Series([review], dtype=object))
        words = text.split_words(cleaned)[0].to_pylist()
        ids, lengths, first = encoding.encode(cleaned)
        kept = words[first[0] : first[0] + encoding.max_len]
        model.eval()
        with self.scoring.autocast():
            out = model(
                torch.from_numpy(ids[:, : lengths[0]]).to(self.file.device),
                torch.from_numpy(lengths).to(self.file.device),
            )
        return Reading(
            words=kept,
            unknown=(ids[0, : len(kept)] == UNK).tolist(),
            cut=len(words) - len(kept),
            truncate=encoding.truncate,
            max_len=encoding.max_len,
            probability=float(torch.sigmoid(out.verdict.float())[0]),
            running=torch.sigmoid(out.every[0, : len(kept)].float()).tolist(),
        )
