"""Reading and writing the artifacts stages exchange, atomically and with checks.

Every write goes to a temporary file beside the target and is renamed over it, so a failed or
killed stage never leaves a half-written artifact. Every read checks the layout and names the
stage to rerun when an artifact was damaged or edited by hand.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from zimdb.errors import PipelineError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temporary path to write; renamed to `dest` only when the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; artifacts get ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def damaged(path: Path, stage: str, why: str) -> PipelineError:
    return PipelineError(
        f"{path}: {why}; it was damaged or edited by hand, recreate it with "
        f"`uv run dvc repro --force {stage}`"
    )


ROWS = 16_384  # rows a stage reads, transforms and writes at a time: its memory, at any size


class TableWriter:
    """A Parquet file written a batch of rows at a time, to a path from atomic_path(); its
    schema is the first batch's. Small batches are gathered into row groups of about ROWS."""

    def __init__(self, path: Path):
        self.path, self.writer, self.pending = path, None, []

    def write(self, rows: pa.Table | pa.RecordBatch | pd.DataFrame) -> None:
        if isinstance(rows, pd.DataFrame):
            rows = pa.Table.from_pandas(rows, preserve_index=False)
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        # Arrow's own types alone: pandas' metadata of a source's columns would outlive them
        # (a label column of names, once mapped to 0/1, would be read back as strings).
        self.pending.append(rows.replace_schema_metadata(None))
        if sum(map(len, self.pending)) >= ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = pa.concat_tables(self.pending)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, rows.schema)
        self.writer.write_table(rows)
        self.pending = []

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.flush()
        if self.writer is not None:
            self.writer.close()


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp, TableWriter(tmp) as out:
        out.write(df)


def parquet_file(path: Path) -> pq.ParquetFile:
    """A Parquet file to read a batch of rows at a time in the memory of that batch. By default
    Arrow reads each column chunk of a row group whole first, and pandas and pyarrow write up to
    1,048,576 rows a group: a gigabyte of reviews."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def _parquet(path: str | Path, stage: str, columns: dict[str, str]) -> pq.ParquetFile:
    """A parquet table written by `stage`, opened and checked to have `columns` of the given
    kinds: "str" (strings, none missing), "str?" (strings or missing, and the column may be
    absent), or numpy dtype kinds such as "iu"."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    try:
        file = parquet_file(path)
    except (OSError, pa.ArrowException) as e:
        raise damaged(path, stage, f"not a readable parquet file ({e})") from None
    schema = file.schema_arrow
    for name, kind in columns.items():
        if name not in schema.names:
            if kind == "str?":
                continue
            raise damaged(path, stage, f"column {name!r} is missing")
        dtype = schema.field(name).type
        strings = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        if (kind.startswith("str") and not strings) or (
            not kind.startswith("str")
            and (strings or np.dtype(dtype.to_pandas_dtype()).kind not in kind)
        ):
            raise damaged(path, stage, f"column {name!r} has type {dtype}")
    return file


def table_batches(
    path: str | Path, stage: str, columns: dict[str, str], rows: int = ROWS
) -> Iterator[pd.DataFrame]:
    """`columns` of a parquet table written by `stage` (checked as _parquet checks them), a batch
    of `rows` at a time."""
    file = _parquet(path, stage, columns)
    present = [name for name in columns if name in file.schema_arrow.names]
    # One thread: Arrow's decoding threads each keep memory of their own (download's peak on
    # 163,840 reviews: 305 MB with them, 267 MB without), and a stage's own work keeps the cores
    # busy anyway.
    for batch in file.iter_batches(batch_size=rows, columns=present, use_threads=False):
        for name in present:
            if columns[name] != "str?" and batch.column(name).null_count:
                raise damaged(Path(path), stage, f"column {name!r} has missing values")
        yield batch.to_pandas()


def read_columns(path: str | Path, stage: str, columns: dict[str, str]) -> pd.DataFrame:
    """Whole `columns` of a parquet table written by `stage` (the small ones: labels, movies)."""
    parts = list(table_batches(path, stage, columns))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))


def read_rows(path: str | Path, stage: str, column: str, rows: np.ndarray) -> pd.Series:
    """The strings of `column` at the sorted positions `rows` of a table written by `stage`,
    read a batch at a time; indexed by position."""
    kept, start = [], 0
    for batch in table_batches(path, stage, {column: "str"}):
        inside = rows[(rows >= start) & (rows < start + len(batch))]
        part = batch[column].iloc[inside - start]
        part.index = inside
        kept.append(part)
        start += len(batch)
    return pd.concat(kept) if kept else pd.Series([], dtype="str")


def count_rows(path: str | Path, stage: str) -> int:
    return _parquet(path, stage, {}).metadata.num_rows


def write_vocab(words: list[str], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(words) + "\n")


def read_vocab(path: str | Path, stage: str = "vocab") -> list[str]:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    words = path.read_text().split("\n")[:-1]
    if len(words) < 3 or len(set(words)) != len(words) or any(not w for w in words):
        raise damaged(path, stage, "expected one distinct word per line, PAD and UNK first")
    return words


def encoded_dtype(vocab_size: int, max_len: int) -> np.dtype:
    ids = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    return np.dtype([("ids", ids, (max_len,)), ("length", np.int32), ("label", np.uint8)])


class EncodedWriter:
    """One split's encoded reviews as one .npy, written a batch of records at a time to a path
    from atomic_path(): np.save's bytes (no timestamps, so reruns are byte-identical).

    Not through numpy's open_memmap, which writes the same bytes: the pages written through a
    map stay in the process's memory, and encode's peak at 80x IMDB went from 0.64 to 1.54 GiB
    (benchmarks.scale on a 2-core AMD EPYC, `d378ec5`)."""

    def __init__(self, path: Path, rows: int, dtype: np.dtype):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by __exit__)
        self.rows, self.written = rows, 0
        header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype))
        np.lib.format.write_array_header_1_0(self.file, header | {"shape": (rows,)})

    def write(self, records: np.ndarray) -> None:
        self.file.write(records.tobytes())
        self.written += len(records)

    def __enter__(self) -> "EncodedWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        self.file.close()
        if kind is None and self.written != self.rows:
            raise RuntimeError(f"{self.written} records written of the {self.rows} announced")


def open_encoded(
    path: str | Path, vocab_size: int, max_len: int, stage: str = "encode"
) -> np.ndarray:
    """One split's encoded reviews as a read-only memory map, checked against the vocabulary and
    width they were made with (zimdb.data.encoding): a split of any size costs no memory until
    its rows are read, and then only the page cache's."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    try:
        records = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise damaged(path, stage, f"not a readable .npy file ({e})") from None
    names = records.dtype.names or ()
    if names != ("ids", "length", "label") or records.ndim != 1:
        raise damaged(path, stage, f"unexpected layout {records.dtype}")
    bad = records.dtype["ids"].shape != (max_len,)
    for start in range(0, len(records), ROWS):  # a batch at a time: no copy of the whole split
        part = records[start : start + ROWS]
        bad = bad or (
            (part["length"] < 1).any()
            or (part["length"] > max_len).any()
            or (part["label"] > 1).any()
            or int(part["ids"].max()) >= vocab_size
        )
    if bad:
        raise damaged(path, stage, "widths, lengths, labels or ids out of range for its encoding")
    return records
