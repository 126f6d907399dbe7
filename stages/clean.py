"""Stage clean: the original cleaning rules, and a validation split carved out of train.

Writes data/clean/{train,val,test}.parquet (text, label). Test is only ever used by evaluate.
"""

from pathlib import Path

from sklearn.model_selection import train_test_split

from zimdb import params, text
from zimdb.artifacts import read_table, write_table
from zimdb.errors import PipelineError, run

RAW, OUT = Path("data/raw"), Path("data/clean")
COLUMNS = {"text": "str", "label": "iu"}


def main() -> None:
    p = params.load("split")
    train = read_table(RAW / "train.parquet", "download", COLUMNS)
    test = read_table(RAW / "test.parquet", "download", COLUMNS)
    try:
        train, val = train_test_split(
            train, test_size=p.val_fraction, stratify=train.label, random_state=p.seed
        )
    except ValueError as e:  # too few reviews for the fraction, or a class with one review
        raise PipelineError(
            f"split.val_fraction={p.val_fraction}: cannot split {len(train)} train reviews ({e})"
        ) from None
    for name, df in {"train": train, "val": val, "test": test}.items():
        df = df[["text", "label"]].assign(text=text.clean(df.text)).reset_index(drop=True)
        write_table(df, OUT / f"{name}.parquet")
        print(f"{name}: {len(df)} reviews")


if __name__ == "__main__":
    run(main)
