"""data/model.pt, the train stage's model file: its layout, how it is written and read back.

The file holds the model's config and weights, the Encoding of the data it was trained on (its
vocabulary and encode settings) and the precision it was trained in. Given model.pt alone,
predict, the web service or anyone else cleans, encodes and scores a review exactly as the
pipeline did, whatever params.yaml or data/ say now (zimdb.scoring.lstm does the scoring).
"""

import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zimdb.data.artifacts import atomic_path
from zimdb.data.encoding import Encoding
from zimdb.errors import PipelineError
from zimdb.model.lstm import ModelConfig, SentimentLSTM


@dataclass
class ModelFile:
    model: SentimentLSTM
    encoding: Encoding
    precision: str  # trained in: fp32, bf16 or fp16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, path: str | Path) -> None:
        saved = {
            "config": asdict(self.model.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "encoding": asdict(self.encoding),
            "precision": self.precision,
        }
        # Through a file object: given a path, torch.save names the archive's root folder after
        # the (random) temporary file, and the same weights would give different bytes every run.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(saved, f)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ModelFile":
        """The file at `path` with its model on `device`, in eval mode; anything missing,
        damaged or of another layout is a PipelineError of one line."""
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
            return cls(model.to(device).eval(), Encoding(**saved["encoding"]), saved["precision"])
        except Exception as e:  # any damage or an older layout reads as one message, one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PipelineError(
                f"{path}: cannot rebuild the model ({type(e).__name__}: {reason}); recreate it with "
                "`uv run dvc repro --force train`"
            ) from None
