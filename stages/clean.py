"""Stage clean: the original cleaning rules, and a validation split carved out of train
(stratified by label, or by whole movies with split.group_by=movie).

Writes data/clean/{train,val,test}.parquet (text, label), each in its raw split's row order; the
texts pass through a batch at a time. Test is only ever used by evaluate.
"""

from zimdb import params
from zimdb.data import text
from zimdb.data.artifacts import TableWriter, atomic_path, read_columns, table_batches
from zimdb.data.split import held_out
from zimdb.errors import run
from zimdb.paths import CLEAN, RAW

COLUMNS = {"text": "str", "label": "iu"}


def main() -> None:
    p = params.load("split")
    # Which train reviews go to val is decided from their labels (and movies) alone.
    grouping = {"label": "iu"} | ({"movie": "str?"} if p.group_by == "movie" else {})
    labels = read_columns(RAW / "train.parquet", "download", grouping)
    to_val = held_out(labels, p.val_fraction, p.seed, p.group_by)
    outs = {name: CLEAN / f"{name}.parquet" for name in ("train", "val", "test")}
    counts = dict.fromkeys(outs, 0)
    with (
        atomic_path(outs["train"]) as train,
        atomic_path(outs["val"]) as val,
        atomic_path(outs["test"]) as test,
        TableWriter(train) as to_train,
        TableWriter(val) as to_validation,
        TableWriter(test) as to_test,
    ):
        row = 0
        for batch in table_batches(RAW / "train.parquet", "download", COLUMNS):
            batch = batch.assign(text=text.clean(batch.text))
            held = to_val[row : row + len(batch)]
            to_train.write(batch[~held])
            to_validation.write(batch[held])
            counts["train"], counts["val"] = (
                counts["train"] + (~held).sum(),
                counts["val"] + held.sum(),
            )
            row += len(batch)
        for batch in table_batches(RAW / "test.parquet", "download", COLUMNS):
            to_test.write(batch.assign(text=text.clean(batch.text)))
            counts["test"] += len(batch)
    for name, n in counts.items():
        print(f"{name}: {n} reviews")


if __name__ == "__main__":
    run(main)
