"""Stage download: labelled reviews from ModelScope, the Stanford aclImdb archive, or your own
CSV, Parquet or JSON Lines files (download.source: table).

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
from zimdb.errors import run
from zimdb.paths import RAW


def splits(p: params.Download) -> dict[str, Split]:
    """Train and test of the source download.source names, each a stream of batches."""
    if p.source == "table":
        negative, positive = (str(label).lower() for label in p.labels)
        labels = Labels(
            (negative,),
            (positive,),
            f"download.labels maps {negative} to negative and {positive} to positive",
        )
        files = {"train": Path(p.train), "test": Path(p.test)}
        for split, path in files.items():
            table.check(path, f"download.{split}")
        return {s: Split(str(f), lambda f=f: table.batches(f), labels) for s, f in files.items()}
    if p.source == "modelscope":
        frames, origin = modelscope.load(p.dataset), p.dataset
    else:
        frames, origin = aclimdb.load(p.archive), p.archive
    return {
        split: Split(f"{origin} ({split})", lambda df=df: in_batches(df), IMDB)
        for split, df in frames.items()
    }


def main() -> None:
    p = params.load("download")
    sources = splits(p)
    counts = {}
    # Both splits are checked before either is written.
    with atomic_path(RAW / "train.parquet") as train, atomic_path(RAW / "test.parquet") as test:
        for (split, source), path in zip(sources.items(), (train, test), strict=True):
            counts[split] = write(source, p.limit, path)
    for split, (negative, positive) in counts.items():
        print(f"{split}: {negative + positive} reviews ({negative} negative, {positive} positive)")


if __name__ == "__main__":
    run(main)
