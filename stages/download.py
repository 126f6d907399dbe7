"""Stage download: IMDB reviews from ModelScope or the Stanford aclImdb archive.

Writes data/raw/{train,test}.parquet: text, label (0 negative, 1 positive) and, where the source
has them, id, rating and movie (the IMDb title id, from the archive's urls_{pos,neg}.txt).
"""

import pandas as pd

from zimdb import params
from zimdb.data import aclimdb as aclimdb_source
from zimdb.data import modelscope as modelscope_source
from zimdb.data.artifacts import write_table
from zimdb.errors import PipelineError, run
from zimdb.paths import RAW

LABELS = {0: 0, 1: 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}


def map_labels(labels: pd.Series, origin: str) -> pd.Series:
    """0/1 or 'pos'/'neg' (as the sources give them) to 0/1; anything else is refused."""
    mapped = labels.map(lambda v: v.lower() if isinstance(v, str) else v).map(LABELS)
    if mapped.isna().any():
        bad = labels[mapped.isna()].iloc[0]
        raise PipelineError(
            f"{origin}: unknown label {bad if not isinstance(bad, str) else repr(bad)}; "
            "accepted: 0, 1, 'neg', 'pos', 'negative', 'positive'"
        )
    return mapped.astype("int64")


def subset(df: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` rows, as balanced across labels as the counts allow, the same every run."""
    if limit == 0 or len(df) <= limit:
        return df
    per_label = df.groupby("label").size().sort_index()
    take = {label: 0 for label in per_label.index}
    while sum(take.values()) < limit:  # round-robin so an odd limit or a small class still fits
        for label in take:
            if take[label] < per_label[label] and sum(take.values()) < limit:
                take[label] += 1
    parts = [df[df.label == label].sample(n=n, random_state=0) for label, n in take.items()]
    return pd.concat(parts).sort_index()


def main() -> None:
    p = params.load("download")
    if p.source == "modelscope":
        frames, origin = modelscope_source.load(p.dataset), p.dataset
    else:
        frames, origin = aclimdb_source.load(p.archive), p.archive
    out = {}
    for split, df in frames.items():  # check both splits before writing either
        where = f"{origin} ({split})"
        missing = df["text"].isna()
        if missing.any():  # nothing to learn from or score: left out, never written as "None"
            print(
                f"warning: {where}: left out {missing.sum()} review(s) with no text (null), "
                f"e.g. row {missing.idxmax()}"
            )
            df = df[~missing]
        df = df.reset_index(drop=True)
        df["label"] = map_labels(df["label"], where)
        df = subset(df, p.limit).reset_index(drop=True)
        if df.label.nunique() < 2:
            raise PipelineError(
                f"{origin} ({split}): only label {df.label.iloc[0]} left after download.limit="
                f"{p.limit}; both classes are needed"
            )
        out[split] = df.assign(text=df["text"].astype(str))
    for split, df in out.items():
        write_table(df, RAW / f"{split}.parquet")
        counts = df.label.value_counts()
        print(
            f"{split}: {len(df)} reviews ({counts.get(0, 0)} negative, {counts.get(1, 0)} positive)"
        )


if __name__ == "__main__":
    run(main)
