"""One review as a model read it, word by word: what the web page draws (POST /explain)."""

from dataclasses import dataclass

import pandas as pd
import torch

from zimdb.data import text
from zimdb.scoring.lstm import TrainedModel
from zimdb.scoring.scorer import Scorer


@dataclass
class Reading:
    """One review as the model read it, and its verdict after each word."""

    words: list[str]  # the words read: cleaned, then truncated to max_len
    unknown: list[bool]  # not in the model's vocabulary (the LSTM reads them as UNK)
    cut: int  # words dropped by truncation (from the start with truncate "tail")
    truncate: str | None  # which end a long review keeps; None: the model reads all of it
    max_len: int | None  # the most words it reads; None: no limit
    probability: float  # P(positive), as the model's probabilities() gives it
    running: list[float] | None  # P(positive) had the review ended at each word


def running_note(model: Scorer) -> str | None:
    """Why `model` has no running verdict, for the page; None where it has one."""
    if isinstance(model, TrainedModel):
        return None
    return (
        f"No running verdict: {model.describe()} reads a review as a bag of word n-grams, "
        "with no state after each word."
    )


def read(model: Scorer, review: str) -> Reading:
    if not isinstance(model, TrainedModel):  # the baseline: no state after each word
        words = text.split_words(text.clean(pd.Series([review], dtype=object)))[0].to_pylist()
        probability = float(model.probabilities(pd.Series([review], dtype=object))[0])
        unknown = [w not in model.unigrams for w in words]
        return Reading(words, unknown, 0, None, None, probability, None)
    return read_lstm(model, review)


@torch.no_grad()
def read_lstm(trained: TrainedModel, review: str) -> Reading:
    """The words `trained` reads of `review` and its running verdict: the sigmoid of the
    verdict at every word t, from one pass over the review."""
    model = trained.model
    cleaned = text.clean(pd.Series([review], dtype=object))
    words = text.split_words(cleaned)[0].to_pylist()
    ids, lengths = text.encode(cleaned, trained.vocab, trained.max_len, trained.truncate)
    n = min(len(words), trained.max_len)
    kept = words[len(words) - n :] if trained.truncate == "tail" else words[:n]
    ids_t = torch.from_numpy(ids[:, : lengths[0]]).to(trained.device)
    model.eval()
    with trained.autocast():
        out = model(ids_t, torch.from_numpy(lengths).to(trained.device))
    return Reading(
        words=kept,
        unknown=(ids[0, :n] == text.UNK).tolist(),
        cut=len(words) - n,
        truncate=trained.truncate,
        max_len=trained.max_len,
        probability=float(torch.sigmoid(out.verdict.float())[0]),
        running=torch.sigmoid(out.every[0, :n].float()).tolist(),
    )
