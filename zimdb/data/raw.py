"""A split as the download stage writes it (data/raw): a source's reviews as batches of rows,
their labels made 0 and 1, the limit's subset of them, and the checks that both classes are
there; written a batch at a time."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from zimdb.data.artifacts import TableWriter
from zimdb.data.table import ROWS
from zimdb.errors import PipelineError


@dataclass(frozen=True)
class Labels:
    """A source's names of the two classes, matched case-insensitively as strings."""

    negative: tuple[str, ...]
    positive: tuple[str, ...]
    accepted: str  # what an error says is accepted

    def ids(self, labels: pa.Array, wanted: pa.Array, where: str, first_row: int) -> np.ndarray:
        """0 or 1 for every label; where `wanted`, one of neither class is a PipelineError that
        names its row, counted from `first_row`."""
        names = [*self.negative, *self.positive]
        found = pc.index_in(pc.utf8_lower(labels.cast(pa.string())), value_set=pa.array(names))
        unknown = pc.and_(pc.is_null(found), wanted)
        if pc.any(unknown).as_py():
            row = pc.index(unknown, True).as_py()
            bad = labels[row].as_py()
            what = "has no label" if bad is None else f"has the unknown label {bad!r}"
            raise PipelineError(f"{where}: row {first_row + row} {what}; {self.accepted}")
        return (pc.fill_null(found, 0).to_numpy() >= len(self.negative)).astype(np.int64)


IMDB = Labels(
    ("0", "neg", "negative"),
    ("1", "pos", "positive"),
    "accepted: 0, 1, neg, pos, negative, positive",
)


@dataclass(frozen=True)
class Split:
    where: str  # the file, or the dataset and split, for messages
    batches: Callable[[], Iterator[pa.RecordBatch]]  # text, label and any extra columns
    labels: Labels


def in_batches(df: pd.DataFrame) -> Iterator[pa.RecordBatch]:
    if df.label.dtype == object:  # a dataset's labels may mix numbers and names: 0, "pos"
        df = df.assign(label=df.label.map(lambda v: v if v is None else str(v)))
    yield from pa.Table.from_pandas(df, preserve_index=False).to_batches(ROWS)


def subset(labels: np.ndarray, limit: int) -> np.ndarray | None:
    """Which rows to keep for at most `limit`, as balanced across labels as the counts allow and
    the same every run; None: all of them."""
    if limit == 0 or len(labels) <= limit:
        return None
    series = pd.Series(labels)
    per_label = series.value_counts().sort_index()
    take = {label: 0 for label in per_label.index}
    while sum(take.values()) < limit:  # round-robin so an odd limit or a small class still fits
        for label in take:
            if take[label] < per_label[label] and sum(take.values()) < limit:
                take[label] += 1
    keep = np.zeros(len(labels), dtype=bool)
    for label, n in take.items():
        keep[series[series == label].sample(n=n, random_state=0).index] = True
    return keep


def reviews(split: Split) -> Iterator[tuple[pa.Table, int, int]]:
    """Each batch's reviews with text, labelled 0/1; how many rows had no text (null), and the
    first of them (a row number of the whole split) or -1."""
    row = 0
    for batch in split.batches():
        has_text = pc.is_valid(batch.column("text"))
        ids = split.labels.ids(batch.column("label"), has_text, split.where, row)
        rows = pa.Table.from_batches([batch])
        rows = rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(ids))
        rows = rows.set_column(0, "text", rows.column("text").cast(pa.large_string()))
        no_text = len(batch) - pc.sum(has_text).as_py() if len(batch) else 0
        first = row + pc.index(has_text, False).as_py() if no_text else -1
        yield rows.filter(has_text), no_text, first
        row += len(batch)


def write(split: Split, limit: int, path: Path) -> np.ndarray:
    """`split`'s reviews with text, at most `limit` (0: all), to `path`; their count per label.
    Reviews without text are left out with a warning: nothing to learn from or score."""
    keep = None
    if limit:  # a first pass, over the labels alone: which rows the limit keeps
        labels = [rows.column("label").to_numpy() for rows, _, _ in reviews(split)]
        keep = subset(np.concatenate(labels or [[]]).astype(np.int64), limit)
    counts, kept, no_text, first = np.zeros(2, dtype=np.int64), 0, 0, -1
    with TableWriter(path) as out:
        for rows, dropped, at in reviews(split):
            no_text, first = no_text + dropped, first if first >= 0 else at
            if keep is not None:
                kept, rows = kept + len(rows), rows.filter(keep[kept : kept + len(rows)])
            out.write(rows)
            counts += np.bincount(rows.column("label").to_numpy(), minlength=2)
    if no_text:
        print(
            f"warning: {split.where}: left out {no_text} review(s) with no text (null), e.g. row {first}"
        )
    if not counts.sum():
        raise PipelineError(f"{split.where}: holds no reviews")
    if not counts.all():
        name = "negative" if counts[0] else "positive"
        after = f" left after download.limit={limit}" if limit else ""
        raise PipelineError(
            f"{split.where}: every review{after} is {name}; both classes are needed"
        )
    return counts
