"""Stage download: labelled reviews from ModelScope, the Stanford aclImdb archive, or your own
files (download.source: table; formats and columns in zimdb.data.table).

Writes data/raw/{train,test}.parquet: text, label (0 negative, 1 positive) and, where the source
has them, id, rating and movie (the IMDb title id, from the archive's urls_{pos,neg}.txt). Your files
pass through in batches of rows (zimdb.data.raw), so their size is bounded by the disk, not the
memory (ModelScope and the archive hand over IMDB's 50,000 reviews whole); both files are
written, or neither.
"""

from pathlib import Path

from zimdb import params
from zimdb.data import aclimdb, modelscope, table
from zimdb.data.artifacts import atomic_path
from zimdb.data.raw import IMDB, Labels, Split, in_batches, write
from zimdb.errors import PipelineError, run
from zimdb.paths import RAW


def splits(p: params.Download) -> dict[str, Split]:
    """Train and test of the source download.source names, each a stream of batches."""
    if p.source == "table":
        labels, columns = table_labels(p), table_columns(p)
        files = {"train": Path(p.train), "test": Path(p.test)}
        for split, path in files.items():
            table.check(path, f"download.{split}: {path}", columns)
        return {
            split: Split(str(f), lambda f=f: table.batches(f, columns), labels)
            for split, f in files.items()
        }
    if p.source == "modelscope":
        frames, origin = modelscope.load(p.dataset), p.dataset
    else:
        frames, origin = aclimdb.load(p.archive), p.archive
    return {
        split: Split(f"{origin} ({split})", lambda df=df: in_batches(df), IMDB)
        for split, df in frames.items()
    }


def table_columns(p: params.Download) -> table.Columns:
    return table.Columns(
        tuple(p.text_columns),
        p.label_column,
        tuple(p.column_names),
        {
            "text": "download.text_columns",
            "label": "download.label_column",
            "names": "download.column_names",
        },
    )


def table_labels(p: params.Download) -> Labels:
    (negative, positive), skipped = p.classes(), p.skipped()
    both = [label for label in skipped if label in negative + positive]
    if both:
        raise PipelineError(
            f"params.yaml: download.skip_labels: {both[0]} is a class's label in download.labels"
        )
    accepted = f"download.labels maps {', '.join(negative)} to negative and {', '.join(positive)} to positive"
    if skipped:
        accepted += f", and download.skip_labels leaves out {', '.join(skipped)}"
    return Labels(negative, positive, accepted, skipped)


def main() -> None:
    p = params.load("download")
    sources = splits(p)
    counted = {}
    # Both splits are checked before either is written.
    with atomic_path(RAW / "train.parquet") as train, atomic_path(RAW / "test.parquet") as test:
        for (split, source), path in zip(sources.items(), (train, test), strict=True):
            counted[split] = write(source, p.limit, path)
    for split, kept in counted.items():
        print(f"{split}: {kept}")


if __name__ == "__main__":
    run(main)
