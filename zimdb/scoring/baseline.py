"""The baseline a user would try first: TF-IDF over word n-grams and logistic regression
(scikit-learn), fitted on the same cleaned reviews as the LSTM; its file is data/baseline.skops.

Out of core, as scikit-learn's documentation does it for text larger than memory: n-grams are
hashed (HashingVectorizer: no vocabulary to hold), a first pass counts each feature's document
frequency, and the logistic regression is fitted by stochastic gradient descent
(SGDClassifier.partial_fit), a shuffled bucket of reviews at a time. Memory holds one batch,
whatever the split's size; the hashed train split waits on disk between passes.

Saved with skops rather than pickle or joblib: loading a skops file builds only the types it is
told to trust (scikit-learn's and numpy's here), so `predict --model` or the service given a
file from elsewhere never runs code from it, as model.pt is read with torch's weights_only.
"""

import contextlib
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import skops.io
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline

from zimdb.data import text
from zimdb.data.artifacts import atomic_path
from zimdb.errors import PipelineError
from zimdb.params import Baseline as BaselineParams
from zimdb.scoring.scorer import Reading

NAME = "TF-IDF + logistic regression"
BUCKET = 16_384  # train reviews shuffled together for gradient descent
# Hashing the n-grams is most of the baseline's time (scikit-learn builds each n-gram in a Python
# loop); a batch of at least this many reviews is split across processes, one a core: IMDB's
# 25,000 test reviews took 3.0 s in one process and 1.7 s in two on a 2-core AMD EPYC.
SPLIT_FROM = 2_000
PROCESSES = os.cpu_count() or 1  # of hashing_pool(), a core each


def hashing_pool() -> ProcessPoolExecutor | contextlib.nullcontext:
    """Processes for Baseline.counts, a core each, forked now: call it first thing, while this
    process has no other thread (a fork carries none over, and a lock one held would stay
    locked). Spawned instead, each would import the stage's module again (3 s of skops and
    dvclive). Fork is Linux's alone here; elsewhere, none (a null context)."""
    if sys.platform != "linux" or threading.active_count() > 1:
        return contextlib.nullcontext()
    pool = ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("fork"))
    pool.submit(int)  # forks them all, before the executor starts its own threads
    return pool


@dataclass
class Baseline:
    pipeline: Pipeline  # hashed n-gram counts -> TF-IDF -> logistic regression
    pool: ProcessPoolExecutor | None = field(default=None, repr=False)  # see hashing_pool()

    @classmethod
    def build(cls, p: BaselineParams, pool: ProcessPoolExecutor | None = None) -> "Baseline":
        counts = HashingVectorizer(
            # The pipeline's own words, the cleaned text's space-separated runs of letters and
            # apostrophes: scikit-learn's default pattern would drop "a" and "i" and split
            # "don't" (test accuracy 0.9054 against 0.9043 on the full data).
            token_pattern=r"\S+",
            ngram_range=(1, p.ngram_max),
            n_features=1 << p.hash_bits,
            alternate_sign=False,  # counts, for the TF-IDF weights
            norm=None,
            dtype=np.float32,
        )
        weights = TfidfTransformer(sublinear_tf=p.sublinear_tf)
        regression = SGDClassifier(loss="log_loss", alpha=p.alpha, random_state=0)
        return cls(make_pipeline(counts, weights, regression), pool)

    def fit(
        self,
        batches: Callable[[], Iterator[pd.DataFrame]],
        reviews: int,
        p: BaselineParams,
        scratch: Path,
    ) -> "Baseline":
        """Fitted on the cleaned train reviews `batches()` gives (text, label), `reviews` of
        them, in p.epochs passes; the hashed counts wait in a folder made in `scratch`."""
        counts, weights, regression = self.pipeline.named_steps.values()
        rng = np.random.default_rng(0)
        df = np.zeros(counts.n_features, dtype=np.int64)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".baseline-") as folder:
            buckets = Buckets(Path(folder), math.ceil(reviews / BUCKET), counts.n_features)
            for batch in batches():
                x = self.counts(batch.text)
                df += np.bincount(x.indices, minlength=counts.n_features)
                buckets.add(x, batch.label.to_numpy(), rng.integers(buckets.count, size=len(batch)))
            # TfidfTransformer.fit's weights (smoothed), from the counts of the whole split; an
            # n-gram in fewer than min_df reviews weighs nothing.
            idf = np.log((1 + buckets.rows) / (1 + df)) + 1
            weights.idf_ = np.where(df >= p.min_df, idf, 0).astype(np.float32)
            weights.n_features_in_ = counts.n_features
            for _ in range(p.epochs):
                for bucket in rng.permutation(buckets.count):
                    x, y = buckets.read(bucket)
                    if len(y):
                        order = rng.permutation(len(y))
                        x, y = weights.transform(x[order]), y[order]
                        regression.partial_fit(x, y, classes=[0, 1])
        return self

    def probabilities(self, texts: pd.Series, batch_size: int | None = None) -> np.ndarray:
        """P(positive) of each raw review, cleaned as the pipeline cleans (`batch_size`, which
        the LSTM scores in, means nothing here)."""
        return self.cleaned_probabilities(text.clean(texts.reset_index(drop=True)))

    def cleaned_probabilities(self, cleaned: pd.Series) -> np.ndarray:
        return self.pipeline[1:].predict_proba(self.counts(cleaned))[:, 1]

    def counts(self, cleaned: pd.Series) -> sp.csr_matrix:
        """The hashed n-gram counts of cleaned reviews (the pipeline's first step), split across
        the pool's processes where there is one and the batch is large."""
        texts, vectorizer = list(cleaned), self.pipeline[0]
        if self.pool is None or len(texts) < SPLIT_FROM:
            return vectorizer.transform(texts)
        parts = np.array_split(np.arange(len(texts)), PROCESSES)
        pieces = [texts[part[0] : part[-1] + 1] for part in parts if len(part)]
        return sp.vstack(list(self.pool.map(vectorizer.transform, pieces)), format="csr")

    def describe(self) -> str:
        return NAME

    @property
    def running_note(self) -> str:
        return (
            f"No running verdict: {NAME} reads a review as a bag of word n-grams, with no state "
            "after each word."
        )

    def read(self, review: str) -> Reading:
        """The words it reads of `review` (all of them) and its verdict; no running verdict. A
        word is unknown where its hashed feature weighs nothing: too rare in train."""
        given = pd.Series([review], dtype=object)
        words = text.split_words(text.clean(given))[0].to_pylist()
        counts, weights, _ = self.pipeline.named_steps.values()
        features = counts.transform(words).indices  # a word alone is one unigram
        unknown = (weights.idf_[features] == 0).tolist()
        return Reading(words, unknown, 0, None, None, float(self.probabilities(given)[0]), None)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:  # compressed: the schema's JSON is 125 MB, 5.5 MB so
            skops.io.dump(self.pipeline, tmp, compression=zipfile.ZIP_DEFLATED)

    @classmethod
    def load(cls, path: str | Path) -> "Baseline":
        path = Path(path)
        if not path.exists():
            raise PipelineError(f"{path} not found: fit the baseline first (`uv run dvc repro`)")
        try:
            pipeline = skops.io.load(path)  # scikit-learn's and numpy's types only
        except Exception as e:  # damage, another layout or an untrusted type: one line each
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PipelineError(
                f"{path}: cannot read the baseline ({type(e).__name__}: {reason}); recreate it "
                "with `uv run dvc repro --force baseline`"
            ) from None
        if not isinstance(pipeline, Pipeline):
            raise PipelineError(f"{path}: holds a {type(pipeline).__name__}, not a baseline")
        return cls(pipeline)


class Buckets:
    """Rows of sparse matrices dealt at random into `count` buckets on disk, each bucket's rows
    appended to its own files: read back one bucket at a time, they are a shuffle of the whole
    (a split can come sorted by label, as the Stanford archive's does)."""

    FILES = {"data": np.float32, "indices": np.int32, "sizes": np.int32, "labels": np.int8}

    def __init__(self, folder: Path, count: int, columns: int):
        self.folder, self.count, self.columns, self.rows = folder, max(count, 1), columns, 0
        for b in range(self.count):
            for name in self.FILES:
                (folder / f"{b}.{name}").touch()

    def add(self, x: sp.csr_matrix, labels: np.ndarray, bucket: np.ndarray) -> None:
        for b in np.unique(bucket):
            part = x[bucket == b]
            arrays = {
                "data": part.data,
                "indices": part.indices,
                "sizes": np.diff(part.indptr),
                "labels": labels[bucket == b],
            }
            for name, array in arrays.items():
                with open(self.folder / f"{b}.{name}", "ab") as f:
                    f.write(array.astype(self.FILES[name]).tobytes())
        self.rows += len(labels)

    def read(self, b: int) -> tuple[sp.csr_matrix, np.ndarray]:
        arrays = {
            name: np.fromfile(self.folder / f"{b}.{name}", dtype=dtype)
            for name, dtype in self.FILES.items()
        }
        indptr = np.concatenate([[0], np.cumsum(arrays["sizes"], dtype=np.int64)])
        shape = (len(arrays["labels"]), self.columns)
        return sp.csr_matrix((arrays["data"], arrays["indices"], indptr), shape=shape), arrays[
            "labels"
        ]
