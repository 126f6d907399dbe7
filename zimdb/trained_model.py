"""data/model.pt: the trained weights with everything needed to score raw text as evaluate did.

The file holds the model's config and weights, the vocabulary and the encode settings it was
trained with, and whether it was trained under fp16 autocast. Given model.pt alone, predict,
the web service or anyone else cleans, encodes and scores a review exactly as the pipeline did,
whatever params.yaml or data/ say now.
"""

import zipfile
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
class Reading:
    """One review as the model read it, and its verdict after each word."""

    words: list[str]  # the words read: cleaned, then truncated to max_len
    unknown: list[bool]  # read as UNK: not in the vocabulary
    cut: int  # words dropped by truncation (from the start with truncate "tail")
    probability: float  # P(positive), as probabilities() gives it
    running: list[float] | None  # P(positive) had the review ended at each word; see running()


CLASSES = np.array(["negative", "positive"])  # label 0, label 1
THRESHOLD = 0.5  # P(positive) above it is a positive verdict


def labels(probability: np.ndarray) -> np.ndarray:
    """The class names of P(positive), as evaluate counts them."""
    return CLASSES[(np.asarray(probability) > THRESHOLD).astype(int)]


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
        # torch.save writes a zip archive. Given anything else, torch.load's error suggests
        # loading it with weights_only=False, which would run whatever code the file holds.
        if not zipfile.is_zipfile(path):
            raise PipelineError(
                f"{path}: not a model file, or a damaged one (torch.save writes a zip archive, "
                "this is none); recreate it with `uv run dvc repro --force train`"
            )
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
        except Exception as e:  # any damage or an older layout reads as one message, one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PipelineError(
                f"{path}: cannot rebuild the model ({type(e).__name__}: {reason}); recreate it with "
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

    def has_running_verdict(self) -> bool:
        """Whether the head's reading of the state at word t is the verdict on words 1..t.

        True for a one-direction model that pools the last state: the state at t has seen only
        words 1..t and is exactly what the head would read were the review to end there. A
        backward direction has already read the words after t, and max pooling reads every
        position at once, so for them the head at one position means nothing on its own.
        """
        return not self.model.config.bidirectional and self.model.config.pooling == "last"

    @torch.no_grad()
    def read(self, review: str) -> Reading:
        """The words the model reads of `review` and, where has_running_verdict, its running
        verdict: sigmoid(head(state at word t)) for every t, from one pass over the review."""
        cleaned = text.clean(pd.Series([review], dtype=object))
        words = text.split_words(cleaned)[0].to_pylist()
        ids, lengths = text.encode(cleaned, self.vocab, self.max_len, self.truncate)
        n = int(lengths[0])
        kept = words[len(words) - n :] if self.truncate == "tail" else words[:n]
        # An empty review is read as its single PAD, as forward() reads it.
        ids_t = torch.from_numpy(ids[:, : max(n, 1)]).to(self.device)
        lengths_t = torch.tensor([max(n, 1)], device=self.device)
        self.model.eval()
        running = [] if self.has_running_verdict() else None
        with self.autocast():
            if running is not None and n:
                states = self.model.states(ids_t, lengths_t)[0]
                running = torch.sigmoid(self.model.head(states).squeeze(-1).float()).tolist()
                probability = running[-1]  # the last state is what forward() pools
            else:
                probability = float(torch.sigmoid(self.model(ids_t, lengths_t).float())[0])
        return Reading(
            words=kept,
            unknown=(ids[0, :n] == text.UNK).tolist(),
            cut=len(words) - n,
            probability=probability,
            running=running,
        )
