"""What predict, serve and the page use of a model: the calls both models answer, the LSTM
(zimdb.scoring.lstm) and the baseline (zimdb.scoring.baseline), and what a reading holds."""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd


@dataclass
class Reading:
    """One review as a model read it, and its verdict after each word: what the page draws."""

    words: list[str]  # the words read: cleaned, then truncated to max_len
    unknown: list[bool]  # not in the model's vocabulary (the LSTM reads them as UNK)
    cut: int  # words dropped by truncation (from the start with truncate "tail")
    truncate: str | None  # which end a long review keeps; None: the model reads all of it
    max_len: int | None  # the most words it reads; None: no limit
    probability: float  # P(positive), as the model's probabilities() gives it
    running: list[float] | None  # P(positive) had the review ended at each word


class Scorer(Protocol):
    running_note: str | None  # why the page shows no running verdict; None where it shows one

    def describe(self) -> str: ...

    def probabilities(self, texts: pd.Series, batch_size: int) -> np.ndarray:
        """P(positive) of each raw review, cleaned and encoded as the pipeline does."""

    def read(self, review: str) -> Reading: ...
