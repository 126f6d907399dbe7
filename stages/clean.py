"""Stage clean: the original cleaning rules, and a validation split carved out of train.

Writes data/clean/{train,val,test}.parquet (text, label). Test is only ever used by evaluate.
"""

from pathlib import Path

import pandas as pd

from zimdb import params, text
from zimdb.artifacts import read_table, write_table
from zimdb.errors import PipelineError, run

RAW, OUT = Path("data/raw"), Path("data/clean")
COLUMNS = {"text": "str", "label": "iu"}


def split(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and val, val holding `fraction` of each label's reviews, the same for a seed."""
    val = train.groupby("label").sample(frac=fraction, random_state=seed)
    rest = train.drop(val.index)
    for label, n in train.label.value_counts().sort_index().items():
        if not 0 < (val.label == label).sum() < n:
            raise PipelineError(
                f"split.val_fraction={fraction}: cannot split the {n} train review(s) of label "
                f"{label} into train and val; lower or raise it, or download more reviews"
            )
    return rest, val


def main() -> None:
    p = params.load("split")
    train = read_table(RAW / "train.parquet", "download", COLUMNS)
    test = read_table(RAW / "test.parquet", "download", COLUMNS)
    train, val = split(train, p.val_fraction, p.seed)
    for name, df in {"train": train, "val": val, "test": test}.items():
        df = df[["text", "label"]].assign(text=text.clean(df.text)).reset_index(drop=True)
        write_table(df, OUT / f"{name}.parquet")
        print(f"{name}: {len(df)} reviews")


if __name__ == "__main__":
    run(main)
