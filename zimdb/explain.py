"""One review as a model read it, word by word: what the web page draws (POST /explain)."""

from dataclasses import dataclass

import pandas as pd
import torch

from zimdb import text
from zimdb.model import ModelConfig
from zimdb.scorer import Scorer
from zimdb.trained_model import TrainedModel


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


def has_running_verdict(config: ModelConfig) -> bool:
    """Whether what the head reads at word t gives the verdict on words 1..t.

    True for a one-direction model that pools the last state, or it with the maximum and mean
    of the states up to it ("concat"): what the head reads at t has seen only words 1..t and
    is exactly what it would read were the review to end there. A backward direction has
    already read the words after t, and max pooling reads every position at once, so for them
    the head at one position means nothing on its own.
    """
    return not config.bidirectional and config.pooling in ("last", "concat")


def running_note(model: Scorer) -> str | None:
    """Why `model` has no running verdict, for the page; None where it has one."""
    if not isinstance(model, TrainedModel):  # the baseline
        return (
            f"No running verdict: {model.describe()} reads a review as a bag of word n-grams, "
            "with no state after each word."
        )
    config = model.model.config
    if has_running_verdict(config):
        return None
    if config.bidirectional:
        return (
            "No running verdict: this model reads each review in both directions, so its "
            "state at a word has already seen the words after it."
        )
    return (
        "No running verdict: this model max-pools its states over the whole review, so no "
        "one state is its verdict on the words up to it."
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
    """The words `trained` reads of `review` and, where has_running_verdict, its running
    verdict: the sigmoid of the head's logit at every word t, from one pass over the review."""
    model = trained.model
    cleaned = text.clean(pd.Series([review], dtype=object))
    words = text.split_words(cleaned)[0].to_pylist()
    ids, lengths = text.encode(cleaned, trained.vocab, trained.max_len, trained.truncate)
    n = int(lengths[0])
    kept = words[len(words) - n :] if trained.truncate == "tail" else words[:n]
    # An empty review is read as its single PAD, as forward() reads it.
    ids_t = torch.from_numpy(ids[:, : max(n, 1)]).to(trained.device)
    lengths_t = torch.tensor([max(n, 1)], device=trained.device)
    model.eval()
    running = [] if has_running_verdict(model.config) else None
    with trained.autocast():
        if running is not None and n:
            every = model(ids_t, lengths_t, every_position=True)[1][0]
            running = torch.sigmoid(every.float()).tolist()
            probability = running[-1]  # the last word's is what forward() pools
        else:
            probability = float(torch.sigmoid(model(ids_t, lengths_t).float())[0])
    return Reading(
        words=kept,
        unknown=(ids[0, :n] == text.UNK).tolist(),
        cut=len(words) - n,
        truncate=trained.truncate,
        max_len=trained.max_len,
        probability=probability,
        running=running,
    )
