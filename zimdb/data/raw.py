"""A split as the download stage writes it (data/raw): a source's reviews as batches of rows,
their labels made 0 and 1, rows with no text or a skipped label left out and counted, the
limit's subset of them, and the checks that both classes and some words are there; written a
batch at a time."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from zimdb.data import text
from zimdb.data.artifacts import TableWriter
from zimdb.data.table import ROWS, quoted
from zimdb.errors import PipelineError


@dataclass(frozen=True)
class Labels:
    """A source's values of each class, and those whose rows are left out, matched as strings
    whatever their case and surrounding spaces."""

    negative: tuple[str, ...]
    positive: tuple[str, ...]
    accepted: str  # what an error says is accepted
    skipped: tuple[str, ...] = ()

    def ids(
        self, labels: pa.Array, wanted: pa.Array, where: str, first_row: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """0 or 1 for every label, and which labels are skipped ones; where `wanted`, a label of
        neither class nor skipped is a PipelineError that names its row, counted from
        `first_row`."""
        names = [*self.negative, *self.positive, *self.skipped]
        try:
            said = pc.utf8_lower(pc.utf8_trim_whitespace(labels.cast(pa.string())))
        except pa.ArrowInvalid:  # bytes that are not UTF-8
            raise PipelineError(f"{where}: its labels are not UTF-8 text") from None
        found = pc.fill_null(pc.index_in(said, value_set=pa.array(names)), -1).to_numpy()
        unknown = (found < 0) & wanted.to_numpy(zero_copy_only=False)
        if unknown.any():
            row = int(unknown.argmax())
            bad = labels[row].as_py()
            what = "has no label" if bad is None else f"has the unknown label {quoted(bad)!r}"
            raise PipelineError(f"{where}: row {first_row + row} {what}; {self.accepted}")
        classes = len(self.negative) + len(self.positive)
        return (found >= len(self.negative)).astype(np.int64), found >= classes


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


@dataclass
class Counted:
    """What download kept of a split, per class, and what it left out."""

    classes: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    no_text: int = 0  # null, empty or only spaces
    first_no_text: int = -1  # its first row, or -1
    skipped: int = 0  # of a label in Labels.skipped

    def __str__(self) -> str:
        negative, positive = self.classes
        said = f"{negative + positive} reviews ({negative} negative, {positive} positive)"
        left = []
        if self.skipped:
            left.append(f"{self.skipped} of a skipped label")
        if self.no_text:
            left.append(f"{self.no_text} with no text (the first: row {self.first_no_text})")
        return said + (f"; left out {', '.join(left)}" if left else "")


def reviews(split: Split, counted: Counted) -> Iterator[pa.Table]:
    """Each batch's reviews, labelled 0/1: those with text (not null, empty or only spaces) and
    of neither skipped label, which are counted in `counted`."""
    row = 0
    for batch in split.batches():
        has_text = pc.invert(text.blank(batch.column("text")))
        ids, skipped = split.labels.ids(batch.column("label"), has_text, split.where, row)
        has = has_text.to_numpy(zero_copy_only=False)
        keep = has & ~skipped
        no_text = len(batch) - int(pc.sum(has_text).as_py() or 0)
        if no_text and counted.first_no_text < 0:
            counted.first_no_text = row + pc.index(has_text, False).as_py()
        counted.no_text += no_text
        counted.skipped += int((skipped & has).sum())
        rows = pa.Table.from_batches([batch])
        rows = rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(ids))
        rows = rows.set_column(0, "text", rows.column("text").cast(pa.large_string()))
        yield rows.filter(pa.array(keep))
        row += len(batch)


def write(split: Split, limit: int, path: Path) -> Counted:
    """`split`'s reviews, at most `limit` (0: all), to `path`; what was kept and left out.
    Reviews without text or of a skipped label are left out: nothing to learn from or score.
    A split with no review, with one class only, or with no word in any review is refused."""
    keep = None
    if limit:  # a first pass, over the labels alone: which rows the limit keeps
        labels = [rows.column("label").to_numpy() for rows in reviews(split, Counted())]
        keep = subset(np.concatenate(labels or [[]]).astype(np.int64), limit)
    counted, kept, worded = Counted(), 0, False
    with TableWriter(path) as out:
        for rows in reviews(split, counted):
            if keep is not None:
                kept, rows = kept + len(rows), rows.filter(keep[kept : kept + len(rows)])
            out.write(rows)
            counted.classes += np.bincount(rows.column("label").to_numpy(), minlength=2)
            worded = worded or text.any_words(rows.column("text"))
    if not counted.classes.sum():
        raise PipelineError(f"{split.where}: holds no reviews ({counted})")
    if not counted.classes.all():
        name = "negative" if counted.classes[0] else "positive"
        after = f" left after download.limit={limit}" if limit else ""
        raise PipelineError(
            f"{split.where}: every review{after} is {name}; both classes are needed"
        )
    if not worded:
        raise PipelineError(
            f"{split.where}: no review holds a word (letters, once HTML tags are taken out): "
            "nothing to learn from or score"
        )
    return counted
