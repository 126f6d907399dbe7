"""Carving a validation split out of train: stratified by label, or by whole movies."""

import numpy as np
import pandas as pd

from zimdb.errors import PipelineError
from zimdb.paths import RAW


def held_out_movies(train: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """Rows of whole movies, drawn in a seeded order until they hold `fraction` of the reviews.

    IMDb's train and test movies are disjoint; a val split that shares movies with train rewards
    what a model learnt about particular films, and overstates test accuracy.
    """
    missing = train["movie"].isna().sum() if "movie" in train.columns else len(train)
    if missing:
        raise PipelineError(
            f"split.group_by=movie: {RAW / 'train.parquet'} has no movie for {missing} review(s); "
            "only download.source=aclimdb gives movies (from its urls_pos.txt and urls_neg.txt); "
            "use split.group_by=review"
        )
    sizes = train.movie.value_counts(sort=False).sample(frac=1, random_state=seed)
    taken = sizes.index[(sizes.cumsum() - sizes) < fraction * len(train)]
    return train.index[train.movie.isin(taken)]


def held_out(train: pd.DataFrame, fraction: float, seed: int, group_by: str) -> np.ndarray:
    """Which train rows go to val, the same for a seed: `fraction` of each label's reviews
    (review), or whole movies that together hold `fraction` of the reviews (movie). `train`
    needs only its label column, and movie to group by movie."""
    if group_by == "movie":
        val = train.loc[held_out_movies(train, fraction, seed)]
    else:
        val = train.groupby("label").sample(frac=fraction, random_state=seed)
    for label, n in train.label.value_counts().sort_index().items():
        if not 0 < (val.label == label).sum() < n:
            raise PipelineError(
                f"split.val_fraction={fraction}: cannot split the {n} train review(s) of label "
                f"{label} into train and val; lower or raise it, or download more reviews"
            )
    mask = np.zeros(len(train), dtype=bool)
    mask[train.index.get_indexer(val.index)] = True
    return mask
