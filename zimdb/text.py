"""Text rules shared by the pipeline and prediction: cleaning, tokenising, the special ids."""

import numpy as np
import pandas as pd

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]

_TAG = r"<[^>]*>"
_NOT_WORD = r"[^A-Za-z']+"  # the original rule: keep ASCII letters and apostrophes


def clean(texts: pd.Series) -> pd.Series:
    """HTML tags become spaces, everything but letters and apostrophes a single space, lowercase."""
    return (
        texts.str.replace(_TAG, " ", regex=True)
        .str.replace(_NOT_WORD, " ", regex=True)
        .str.strip()
        .str.lower()
    )


def tokenize(cleaned: pd.Series) -> pd.Series:
    """Cleaned text to lists of words (an empty review gives an empty list)."""
    return cleaned.str.split()


def encode(
    cleaned: pd.Series, vocab: list[str], max_len: int, truncate: str
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [n, max_len] (PAD after the review) and the number of real tokens per row.

    `truncate` says which end of a long review is kept: "head" keeps its start (the original),
    "tail" its end. Vectorised over all tokens at once: no Python loop per review.
    """
    tokens = tokenize(cleaned)
    counts = tokens.str.len().to_numpy(dtype=np.int64)
    flat = np.concatenate([np.asarray(t, dtype=object) for t in tokens]) if len(tokens) else []
    ids = pd.Index(vocab).get_indexer(pd.Index(flat, dtype=object))
    ids[ids < 0] = UNK
    row = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    skip = np.maximum(counts - max_len, 0)[row] if truncate == "tail" else 0
    col = pos - skip
    keep = (col >= 0) & (col < max_len)
    out = np.full((len(counts), max_len), PAD, dtype=np.int64)
    out[row[keep], col[keep]] = ids[keep]
    return out, np.minimum(counts, max_len)
