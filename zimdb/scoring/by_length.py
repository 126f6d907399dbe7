"""Test accuracy by review length, the same for every model: on the test reviews cut to their
first or last k words, and on whole reviews grouped by how many words they have.

Short texts are where the web page's users type, and where a model trained on whole reviews
is weakest. It is measured on a fixed sample of at most SAMPLE test reviews. Each model's stage logs these as rows of one chart that compares the models
(dvc.yaml's "Accuracy by length"); its file, plots/custom/by_length.json under the stage's
dvclive folder, is their record (read by docs/results.py), each row named by its `metric`.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import accuracy_score

from zimdb.data import text
from zimdb.scoring.verdict import predicted

CUTS = (10, 20, 40)  # words kept of each review: short texts, as people type on the page
# Reviews it is measured on: a test split's, or as many of them drawn once, so that its cost
# stops growing with the split (IMDB's test split is this size: all of it).
SAMPLE = 25_000
# Whole reviews by their number of words: [low, high); an LSTM reads the last max_len of them.
BUCKETS = ((1, 100), (100, 200), (200, 400), (400, None))


def sample(reviews: int) -> np.ndarray:
    """The rows of a split of `reviews` it is measured on, in row order: the same every run."""
    if reviews <= SAMPLE:
        return np.arange(reviews)
    return np.sort(np.random.default_rng(0).choice(reviews, SAMPLE, replace=False))


def cut(cleaned: pd.Series, k: int, end: str, words=None) -> pd.Series:
    """The first or last `k` words of each cleaned review (all of a shorter one); `words` is
    text.split_words(cleaned) where the caller has it already."""
    flat, counts = text.split_words(cleaned) if words is None else words
    position = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = position < k if end == "first" else position >= np.repeat(counts - k, counts)
    offsets = np.concatenate([[0], np.cumsum(np.minimum(counts, k))]).astype(np.int32)
    kept = pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))
    return pd.Series(pc.binary_join(kept, " ").to_pylist(), index=cleaned.index, dtype=object)


def rows(
    model: str,
    cleaned: pd.Series,
    labels: np.ndarray,
    probability: np.ndarray,
    score: Callable[[pd.Series], np.ndarray],
) -> list[dict]:
    """The chart's rows for `model`: its accuracy on every cut (scored now with `score`, which
    gives P(positive) of cleaned texts) and on every bucket of whole reviews (`probability`, its
    scores of the whole reviews). `words` is k, or a bucket's median length; `metric` names the
    row (first_10, ..., whole_100-199, ...)."""
    words = text.split_words(cleaned)
    out = []
    for end in ("first", "last"):
        for k in CUTS:
            kept = score(cut(cleaned, k, end, words))
            what = f"the {end} {k} words of every review"
            out.append(_row(model, f"{end} k words", k, what, f"{end}_{k}", kept, labels))
    lengths = words[1]
    for low, high in BUCKETS:
        inside = (lengths >= low) & (lengths < (high or np.inf))
        if inside.any():
            span = f"{low}-{high - 1}" if high else f"{low}+"
            what, metric = f"whole reviews of {span} words", f"whole_{span}"
            median = int(np.median(lengths[inside]))
            out.append(
                _row(
                    model,
                    "whole reviews",
                    median,
                    what,
                    metric,
                    probability[inside],
                    labels[inside],
                )
            )
    return out


def _row(model, read, words, what, metric, probability, labels) -> dict:
    """One point of the chart. Every row has the same keys: DVC drops rows that differ."""
    accuracy = float(accuracy_score(labels, predicted(probability)))
    return {
        "model": model,
        "read": read,
        "words": words,
        "accuracy": accuracy,
        "what": what,
        "metric": metric,
    }
