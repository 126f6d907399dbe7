"""Your own labelled texts as the download stage's source (`download.source: table`): a file per
split, CSV, Parquet or JSON Lines, with a `text` and a `label` column (any others are left
alone). All three are read by pyarrow's streaming readers, a batch of rows at a time, so a file of
any size passes through in the memory of one batch.
"""

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as csv
import pyarrow.json as json

from zimdb.data.artifacts import parquet_file
from zimdb.errors import PipelineError, one_line

COLUMNS = ("text", "label")
FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines"}
# Bytes of CSV or JSON Lines parsed at a time. Arrow's readers read blocks ahead of the reader
# (tens of them) while the stage works: at 1 MiB that stays tens of MB, whatever the file size.
BLOCK = 1 << 20
ROWS = 16_384  # Parquet rows read at a time


def check(path: Path, key: str) -> None:
    """Refused before any work: a file that is missing, empty or of another format."""
    if path.suffix not in FORMATS:
        raise PipelineError(f"{key}: {path} is not a .csv, .parquet or .jsonl file")
    if not path.is_file():
        raise PipelineError(f"{key}: {path} does not exist")
    if path.stat().st_size == 0:
        raise PipelineError(f"{key}: {path} is empty")


def batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The file's text (large_string) and label columns, a batch of rows at a time; labels as
    the file gives them (a number or a string), to be mapped by download.labels."""
    with open(path, "rb") as file:
        try:
            reader = _open(path, file)
            found = reader.schema.names
            missing = [c for c in COLUMNS if c not in found]
            if missing:
                raise PipelineError(f"{path}: no column {missing[0]!r} (found {', '.join(found)})")
            for batch in reader:
                text = batch.column("text").cast(pa.large_string())
                yield pa.record_batch([text, batch.column("label")], names=list(COLUMNS))
        except (pa.ArrowException, OSError) as e:
            reason = one_line(str(e))
            raise PipelineError(
                f"{path}: not a readable {FORMATS[path.suffix]} file ({reason})"
            ) from None


def _open(path: Path, file):
    """A streaming reader of `file` (`path`, opened): its schema is known before the first
    batch is read."""
    if path.suffix == ".parquet":
        return _ParquetReader(parquet_file(file))
    if path.suffix == ".csv":
        return csv.open_csv(
            file,
            read_options=csv.ReadOptions(block_size=BLOCK, use_threads=False),
            # A review holds line breaks: quoted, they belong to the value.
            parse_options=csv.ParseOptions(newlines_in_values=True),
            convert_options=csv.ConvertOptions(column_types={"text": pa.large_string()}),
        )
    return json.open_json(file, read_options=json.ReadOptions(block_size=BLOCK, use_threads=False))


class _ParquetReader:
    def __init__(self, file):
        self.file, self.schema = file, file.schema_arrow

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        # One thread, as the stages read their own tables (zimdb.data.artifacts)
        return self.file.iter_batches(batch_size=ROWS, columns=list(COLUMNS), use_threads=False)
