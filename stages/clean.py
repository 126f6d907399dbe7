"""Stage clean: the original cleaning rules, and a validation split carved out of train
(stratified by label, or by whole movies with split.group_by=movie).

Writes data/clean/{train,val,test}.parquet (text, label). Test is only ever used by evaluate.
"""

from zimdb import params
from zimdb.data import text
from zimdb.data.artifacts import read_table, write_table
from zimdb.data.split import split
from zimdb.errors import run
from zimdb.paths import CLEAN, RAW

COLUMNS = {"text": "str", "label": "iu"}


def main() -> None:
    p = params.load("split")
    train = read_table(RAW / "train.parquet", "download", COLUMNS)
    test = read_table(RAW / "test.parquet", "download", COLUMNS)
    train, val = split(train, p.val_fraction, p.seed, p.group_by)
    for name, df in {"train": train, "val": val, "test": test}.items():
        df = df[["text", "label"]].assign(text=text.clean(df.text)).reset_index(drop=True)
        write_table(df, CLEAN / f"{name}.parquet")
        print(f"{name}: {len(df)} reviews")


if __name__ == "__main__":
    run(main)
