"""The baseline a user would try first: TF-IDF over word n-grams and logistic regression
(scikit-learn), fitted on the same cleaned reviews as the LSTM; its file is data/baseline.skops.

Saved with skops rather than pickle or joblib: loading a skops file builds only the types it is
told to trust (scikit-learn's and numpy's here), so `predict --model` or the service given a
file from elsewhere never runs code from it, as model.pt is read with torch's weights_only.
"""

import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from zimdb.data import text
from zimdb.data.artifacts import atomic_path
from zimdb.errors import PipelineError
from zimdb.params import Baseline as BaselineParams
from zimdb.scoring.scorer import Reading

NAME = "TF-IDF + logistic regression"


@dataclass
class Baseline:
    pipeline: Pipeline

    @classmethod
    def build(cls, p: BaselineParams) -> "Baseline":
        vectorizer = TfidfVectorizer(
            # The pipeline's own words, the cleaned text's space-separated runs of letters and
            # apostrophes: scikit-learn's default pattern would drop "a" and "i" and split
            # "don't" (test accuracy 0.9054 against 0.9043 on the full data).
            token_pattern=r"\S+",
            ngram_range=(1, p.ngram_max),
            min_df=p.min_df,
            max_features=p.max_features,
            sublinear_tf=p.sublinear_tf,
        )
        # liblinear: the binary case's own solver, converging where lbfgs would need more than
        # its default iterations on 200,000 features.
        return cls(make_pipeline(vectorizer, LogisticRegression(C=p.C, solver="liblinear")))

    def fit(self, cleaned: pd.Series, labels: np.ndarray) -> "Baseline":
        self.pipeline.fit(cleaned, labels)
        # skops saves every numpy integer as a file of its own and looks the archive up for
        # each: for 200,000 terms, minutes. Plain ints go into its JSON schema (seconds).
        vectorizer = self.pipeline[0]
        vectorizer.vocabulary_ = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
        return self

    def probabilities(self, texts: pd.Series, batch_size: int | None = None) -> np.ndarray:
        """P(positive) of each raw review, cleaned as the pipeline cleans (`batch_size`, which
        the LSTM scores in, means nothing here)."""
        return self.pipeline.predict_proba(text.clean(texts.reset_index(drop=True)))[:, 1]

    def describe(self) -> str:
        return NAME

    @property
    def running_note(self) -> str:
        return (
            f"No running verdict: {NAME} reads a review as a bag of word n-grams, with no state "
            "after each word."
        )

    def read(self, review: str) -> Reading:
        """The words it reads of `review` (all of them) and its verdict; no running verdict."""
        given = pd.Series([review], dtype=object)
        words = text.split_words(text.clean(given))[0].to_pylist()
        unknown = [w not in self.unigrams for w in words]
        return Reading(words, unknown, 0, None, None, float(self.probabilities(given)[0]), None)

    @cached_property
    def unigrams(self) -> frozenset[str]:
        """The single words among its n-grams: the words it knows."""
        return frozenset(term for term in self.pipeline[0].vocabulary_ if " " not in term)

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
