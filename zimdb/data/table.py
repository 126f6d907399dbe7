"""Tables of reviews as people have them: the download stage's own source (`download.source:
table`) and the files `predict --file` scores.

Read by name: `.csv` and `.tsv` (a header row names the columns, or the settings do where there
is none), `.jsonl`, each of the three also gzip-compressed (`.gz`), `.parquet`, and a folder of
Parquet parts whatever its name (Spark's, Dask's and pandas' partitioned writes; hive-style
`key=value` folders give a column). Every one is streamed, a batch of rows at a time, so a file
of any size passes through in the memory of one batch; a row of any size that fits in memory
is read too. A review's text is one column or several joined in order with a space.
"""

import codecs
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.dataset as ds
import pyarrow.json as json

from zimdb.data.artifacts import parquet_file
from zimdb.errors import PipelineError, one_line

# Bytes of CSV or JSON Lines parsed at a time: Arrow reads a few blocks ahead, so memory stays
# tens of MB whatever the file's size. A row longer than a block fails Arrow's reader
# ("straddling object"): the file is read again with blocks GROW times larger, up to Arrow's
# largest (a 32-bit size), the rows already given skipped.
BLOCK = 1 << 20
GROW = 8
LARGEST_BLOCK = 2**31 - 1
ROWS = 16_384  # Parquet rows read at a time
QUOTE = 80  # characters of a file's content that a message quotes at most
DELIMITERS = {".csv": ",", ".tsv": "\t"}
KINDS = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON Lines", ".parquet": "Parquet"}
FORMATS = ".csv, .tsv or .jsonl (each also .gz), .parquet, or a folder of .parquet parts"
BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


@dataclass(frozen=True)
class Columns:
    """Which columns hold a review: its text, one column or several joined in order, and its
    label (None where none is wanted, as predict reads); the names of a CSV's or TSV's columns
    where it has no header row (empty: its first row names them). `settings` says where each
    is set, for messages: {"text": "download.text_columns", ...}."""

    text: tuple[str, ...] = ("text",)
    label: str | None = "label"
    names: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def wanted(self) -> list[str]:
        return list(dict.fromkeys([*self.text, *([self.label] if self.label else [])]))


def quoted(text: str, limit: int = QUOTE) -> str:
    """`text` from a file, on one line and cut to `limit` characters, the cut marked."""
    text = one_line(str(text), limit + 1)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suffix(path: Path) -> str | None:
    """The format `path` is read as: a key of KINDS, or None for an unknown one; a folder is
    read as Parquet parts."""
    if path.is_dir():
        return ".parquet"
    name = path.name.lower().removesuffix(".gz")
    found = next((s for s in KINDS if name.endswith(s)), None)
    return None if found == ".parquet" and path.name.lower().endswith(".gz") else found


def check(path: Path, named: str, columns: Columns) -> None:
    """Refused before any work, in one line starting with `named` (where and how the path was
    given): missing, unreadable, empty, of another format, or a folder with no Parquet parts;
    column names given for a file whose columns have names of their own."""
    found = suffix(path)
    if not path.exists():
        raise PipelineError(f"{named} does not exist")
    if found is None:
        raise PipelineError(f"{named} is not a {FORMATS}")
    if path.is_dir():
        if not _parts(path):
            raise PipelineError(
                f"{named} is a folder with no .parquet parts (a file, or a folder of Parquet "
                "parts, is read)"
            )
    else:
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as e:
            raise PipelineError(f"{named} cannot be read ({e.strerror.lower()})") from None
        if path.stat().st_size == 0:
            raise PipelineError(f"{named} is empty")
    if columns.names and found not in DELIMITERS:
        raise PipelineError(
            f"{columns.settings.get('names', 'column names')} name the columns of a CSV or TSV "
            f"file without a header row; {path} is {KINDS[found]}, whose columns have names"
        )


def batches(path: Path, columns: Columns) -> Iterator[pa.RecordBatch]:
    """The file's reviews a batch of rows at a time: `text` (large_string) and, where
    `columns.label` is set, `label` as the file gives it (a number or a string). Every failure
    to read is a PipelineError of one line naming the file."""
    kind = suffix(path)
    what = KINDS[kind] + (" (gzip)" if path.name.lower().endswith(".gz") else "")
    try:
        if kind in DELIMITERS:
            _not_utf16(path)
            rows = _grown(lambda block: _csv(path, columns, DELIMITERS[kind], block), path)
        elif kind == ".jsonl":
            _not_utf16(path)
            rows = _grown(lambda block: _json(path, columns, block), path)
        else:
            rows = _parquet(path, columns)
        for batch in rows:
            yield _review(batch, columns, path, validate=kind == ".jsonl")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, quoted(str(e))) from None
    except (pa.ArrowException, OSError) as e:
        said = str(e)
        if "utf8" in said.lower() or "invalid encoding" in said.lower():
            raise _not_utf8(path, quoted(said)) from None
        if match := re.search(r"Expected (\d+) columns, got (\d+): (.*)", said, re.S):
            named = (
                "the header names" if not columns.names else f"{columns.settings['names']} names"
            )
            fields = f"{match[2]} field" + ("s" if match[2] != "1" else "")
            raise PipelineError(
                f"{path}: a row has {fields} where {named} {match[1]} columns "
                f"(row: {quoted(match[3])!r})"
            ) from None
        if match := re.search(r"Column\(/([^)]*)\) was specified twice", said):
            raise PipelineError(f"{path}: column {match[1]!r} appears twice in a row") from None
        raise PipelineError(f"{path}: not a readable {what} file ({quoted(said)})") from None


def _not_utf8(path: Path, where: str) -> PipelineError:
    return PipelineError(
        f"{path}: not UTF-8 text ({where}); files are read as UTF-8: convert it, e.g. "
        f"`iconv -f latin1 -t utf-8`"
    )


def _not_utf16(path: Path) -> None:
    """UTF-16 and UTF-32 (what Excel's "Unicode text" writes) are told apart by their byte
    order mark: Arrow would read them as one garbled column."""
    with pa.input_stream(str(path)) as stream:
        start = stream.read(4)
    for bom, name in BOMS.items():
        if start.startswith(bom):
            raise PipelineError(
                f"{path}: {name} text; files are read as UTF-8: convert it, e.g. "
                f"`iconv -f {name.lower()} -t utf-8`"
            )


def _grown(read: Callable[[int], Iterator[pa.RecordBatch]], path: Path) -> Iterator:
    """`read(block)`'s batches, read again with larger blocks while a row does not fit one."""
    block, given = BLOCK, 0
    while True:
        skip = given
        try:
            for batch in read(block):
                if skip >= len(batch):
                    skip -= len(batch)
                    continue
                batch, skip = batch.slice(skip), 0
                given += len(batch)
                yield batch
            return
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e):
                raise
            if block == LARGEST_BLOCK:
                raise PipelineError(f"{path}: a row after row {given} is over 2 GiB") from None
            block = min(block * GROW, LARGEST_BLOCK)


def _csv(path: Path, columns: Columns, delimiter: str, block: int) -> Iterator[pa.RecordBatch]:
    read = csv.ReadOptions(block_size=block, use_threads=False, column_names=list(columns.names))
    # A review holds line breaks: quoted, they belong to the value.
    parse = csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    with pa.input_stream(str(path)) as stream:  # gzip undone as it streams, by the name
        names = csv.open_csv(stream, read_options=read, parse_options=parse).schema.names
    _check_columns(path, names, columns)
    # Only the wanted columns are converted, all as strings: another column's values cannot
    # stop the file, and a label column of numbers and names reads whole.
    types = {name: pa.large_string() for name in columns.wanted}
    convert = csv.ConvertOptions(column_types=types, include_columns=columns.wanted)
    with pa.input_stream(str(path)) as stream:
        yield from csv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        )


def _json(path: Path, columns: Columns, block: int) -> Iterator[pa.RecordBatch]:
    read = json.ReadOptions(block_size=block, use_threads=False)
    with pa.input_stream(str(path)) as stream:
        schema = json.open_json(stream, read_options=read).schema  # the first block's
    _check_columns(path, schema.names, columns)
    # The wanted fields alone, as the first block typed them: another field's values cannot
    # stop the file.
    wanted = pa.schema(
        [
            pa.field(n, pa.large_string() if pa.types.is_null(t) else t)
            for n, t in zip(schema.names, schema.types, strict=True)
            if n in columns.wanted
        ]
    )
    parse = json.ParseOptions(explicit_schema=wanted, unexpected_field_behavior="ignore")
    with pa.input_stream(str(path)) as stream:
        yield from json.open_json(stream, read_options=read, parse_options=parse)


def _parts(folder: Path) -> list[str]:
    """A folder's Parquet parts, in order: files named *.parquet at any depth, but for those
    under a name starting with . or _ (Spark's checksums and markers, Dask's metadata)."""
    return sorted(
        str(Path(root, name))
        for root, dirs, names in os.walk(folder)
        if not any(part.startswith((".", "_")) for part in Path(root).relative_to(folder).parts)
        for name in names
        if name.endswith(".parquet") and not name.startswith((".", "_"))
    )


def _parquet(path: Path, columns: Columns) -> Iterator[pa.RecordBatch]:
    if not path.is_dir():
        file = parquet_file(path)
        _check_columns(path, file.schema_arrow.names, columns)
        yield from file.iter_batches(batch_size=ROWS, columns=columns.wanted, use_threads=False)
        return
    # A part at a time through the same streaming reader as a file (Arrow's dataset scanner
    # held 200 MB more for parts of 80,000 rows), a hive folder's `key=value` as a column.
    parts = ds.dataset(
        _parts(path), format="parquet", partitioning="hive", partition_base_dir=str(path)
    )
    _check_columns(path, parts.schema.names, columns)
    for part in parts.get_fragments():
        keys = ds.get_partition_keys(part.partition_expression)
        file = parquet_file(Path(part.path))
        inside = [c for c in columns.wanted if c not in keys]
        if lacking := [c for c in inside if c not in file.schema_arrow.names]:
            raise PipelineError(
                f"{path}: the part {part.path} has no column {lacking[0]!r}, which other parts "
                f"have (found {quoted(', '.join(map(repr, file.schema_arrow.names)))})"
            )
        for batch in file.iter_batches(batch_size=ROWS, columns=inside, use_threads=False):
            for name in columns.wanted:
                if name in keys:
                    value = pa.scalar(keys[name], parts.schema.field(name).type)
                    batch = batch.append_column(name, pa.repeat(value, len(batch)))
            yield batch


def _check_columns(path: Path, found: list[str], columns: Columns) -> None:
    """Each wanted column present once; a missing one named with what was found, the look-alike
    that differs by case or spaces where there is one, and the setting to change."""
    for name in columns.wanted:
        if found.count(name) > 1:
            raise PipelineError(f"{path}: column {name!r} appears {found.count(name)} times")
        if name in found:
            continue
        setting = columns.settings.get("label" if name == columns.label else "text")
        named = f", which {setting} names" if setting else ""
        shown = ", ".join(repr(f if len(f) <= 30 else f[:29] + "…") for f in found)
        alike = [f for f in found if f.strip().lower() == name.strip().lower()]
        if alike:
            hint = f"; did you mean {alike[0]!r}?"
        elif not columns.names and not set(columns.wanted) & set(found):
            names = columns.settings.get("names", "the column names")
            hint = f"; if the file has no header row, name its columns with {names}"
        else:
            hint = ""
        raise PipelineError(f"{path}: no column {name!r}{named} (found {quoted(shown)}){hint}")


def _review(batch: pa.RecordBatch, columns: Columns, path: Path, validate: bool) -> pa.RecordBatch:
    """`text`, the text column, or the text columns joined with a space, and `label` where
    wanted; a column of lists, maps or structs is refused. With `validate`, text that is not
    UTF-8 is refused too: JSON's reader lets such bytes through, where CSV's conversion and
    Parquet's strings do not."""
    for name in columns.wanted:
        kind = batch.schema.field(name).type
        if pa.types.is_nested(kind):
            raise PipelineError(
                f"{path}: column {name!r} holds {kind}, not one plain value (a number or a "
                "string) per row"
            )
    parts = [batch.column(name).cast(pa.large_string()) for name in columns.text]
    if validate:
        for part in parts:
            part.validate(full=True)
    if len(parts) == 1:
        text = parts[0]
    else:
        # Joined from parts with no nulls: with null_handling="skip", Arrow drops the rows whose
        # parts are all null from the result, shifting every row after them. The separators of
        # missing or empty parts are trimmed; a row with no part is then empty, which
        # zimdb.data.text.blank tells.
        filled = [pc.fill_null(part, "") for part in parts]
        joined = pc.binary_join_element_wise(*filled, pa.scalar(" ", pa.large_string()))
        text = pc.utf8_trim_whitespace(joined)
    if columns.label is None:
        return pa.record_batch([text], names=["text"])
    return pa.record_batch([text, batch.column(columns.label)], names=["text", "label"])
