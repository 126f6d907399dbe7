"""data/model.pt: the trained weights with everything needed to score raw text as evaluate did.

The file holds the model's config and weights, the vocabulary and the encode settings it was
trained with, and whether it was trained under fp16 autocast. Given model.pt alone, predict,
the web service or anyone else cleans, encodes and scores a review exactly as the pipeline did,
whatever params.yaml or data/ say now.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zimdb import text
from zimdb.artifacts import atomic_path
from zimdb.batching import Encoded
from zimdb.device import autocast
from zimdb.errors import PipelineError
from zimdb.inference import logits
from zimdb.model import ModelConfig, SentimentLSTM


@dataclass
class TrainedModel:
    model: SentimentLSTM
    vocab: list[str]
    max_len: int
    truncate: str
    amp: bool  # trained under fp16 autocast: scored the same way on a GPU

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, path: str | Path) -> None:
        saved = {
            "config": asdict(self.model.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.vocab,
            "encode": {"max_len": self.max_len, "truncate": self.truncate},
            "amp": self.amp,
        }
        # Through a file object: given a path, torch.save names the archive's root folder after
        # the (random) temporary file, and the same weights would give different bytes every run.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(saved, f)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "TrainedModel":
        path = Path(path)
        if not path.exists():
            raise PipelineError(f"{path} not found: train the model first (`uv run dvc repro`)")
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            model = SentimentLSTM(ModelConfig(**saved["config"]))
            model.load_state_dict(saved["state_dict"])
            trained = cls(
                model.to(device).eval(),
                saved["vocab"],
                saved["encode"]["max_len"],
                saved["encode"]["truncate"],
                saved["amp"],
            )
        except Exception as e:  # any damage or an older layout reads as one message
            raise PipelineError(
                f"{path}: cannot rebuild the model ({type(e).__name__}: {e}); recreate it with "
                "`uv run dvc repro --force train`"
            ) from None
        return trained

    def autocast(self):
        return autocast(self.device, self.amp)

    def encode(self, texts: pd.Series) -> Encoded:
        """Raw reviews cleaned and encoded as the pipeline does, on the model's device."""
        ids, lengths = text.encode(text.clean(texts), self.vocab, self.max_len, self.truncate)
        return Encoded(
            ids=torch.from_numpy(ids).to(self.device),
            lengths=torch.from_numpy(lengths).to(self.device),
            labels=torch.zeros(len(ids), device=self.device),
            lengths_np=lengths,
        )

    def probabilities(self, texts: pd.Series, batch_size: int = 256) -> np.ndarray:
        """P(positive) of each raw review."""
        out = logits(
            self.model, self.encode(texts.reset_index(drop=True)), batch_size, self.autocast()
        )
        return torch.sigmoid(out).cpu().numpy()
