"""How a cleaned review becomes the token ids a model reads: the one place it happens.

The encode stage encodes the splits and writes its Encoding beside the arrays
(data/encoded/encoding.json); train copies it into model.pt; scoring and the page's reading
encode with the model's own, whatever params.yaml says now.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from zimdb.data.artifacts import atomic_path, damaged
from zimdb.data.text import PAD, SPECIALS, UNK, split_words
from zimdb.errors import PipelineError


class Tokens(NamedTuple):
    ids: np.ndarray  # [n, max_len] int64, PAD after the review
    lengths: np.ndarray  # tokens read per review: its words kept, or 1 (a lone PAD) if it has none
    first: np.ndarray  # the review's first word kept: words cut from its start


@dataclass(frozen=True)
class Encoding:
    vocab: list[str]  # PAD and UNK first, then the words by id
    max_len: int
    truncate: str  # which end of a long review is kept: "head" (the original) or "tail"

    def encode(self, cleaned: pd.Series) -> Tokens:
        """Every review's ids, padded or truncated to max_len. An empty review is one PAD, so
        that every review has a last token to be read at. Vectorised over all words at once: no
        Python loop per review."""
        flat, counts = split_words(cleaned)
        found = pc.index_in(flat, value_set=pa.array(self.vocab, type=pa.string()))
        ids = pc.fill_null(found, UNK).to_numpy().astype(np.int64)
        first = np.maximum(counts - self.max_len, 0) if self.truncate == "tail" else 0 * counts
        # Each word's column: its position in the review, less the words cut from its start.
        col = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts + first, counts)
        keep = (col >= 0) & (col < self.max_len)
        cell = np.repeat(np.arange(len(counts)) * self.max_len, counts) + col  # index into out
        out = np.full((len(counts), self.max_len), PAD, dtype=np.int64)
        out.reshape(-1)[cell[keep]] = ids[keep]
        return Tokens(out, np.clip(counts, 1, self.max_len), first)


def write_encoding(encoding: Encoding, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(asdict(encoding)))


def read_encoding(path: str | Path, stage: str = "encode") -> Encoding:
    """The Encoding a stage wrote beside its arrays, checked."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    try:
        encoding = Encoding(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise damaged(path, stage, f"not an encoding ({e})") from None
    vocab = encoding.vocab
    ok = (
        isinstance(vocab, list)
        and vocab[:2] == SPECIALS
        and all(isinstance(w, str) and w for w in vocab)
        and len(set(vocab)) == len(vocab)
        and isinstance(encoding.max_len, int)
        and encoding.max_len >= 1
        and encoding.truncate in ("head", "tail")
    )
    if not ok:
        raise damaged(path, stage, "expected a vocabulary, max_len >= 1 and truncate head or tail")
    return encoding
