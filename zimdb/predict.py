"""Score reviews with the trained model: `uv run python -m zimdb.predict "Great film!"`.

Texts come as arguments or from --file: .txt, one review per line, or a table as download reads
it (.csv, .tsv, .jsonl, each also .gz, .parquet or a folder of Parquet parts) whose text is in
--text-columns (`text`; a CSV without a header names its columns with --column-names). Text,
label and probability (of positive) go to --output (.csv, .parquet or .jsonl, by its extension)
or to stdout as CSV. The vocabulary and encode settings come from the model file
itself, so a review scores exactly as evaluate scored it, whatever params.yaml says now.
`--model data/baseline.skops` scores with the baseline instead.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from zimdb.data import table
from zimdb.data.artifacts import atomic_path
from zimdb.errors import PipelineError, run
from zimdb.model.device import resolve
from zimdb.paths import MODEL
from zimdb.scoring import files
from zimdb.scoring.scorer import Scorer
from zimdb.scoring.verdict import labels

CHUNK = 8192  # reviews cleaned and encoded at a time: bounded memory for any file size
BATCH_SIZE = 128  # reviews per forward pass (--batch-size)
WRITERS = {
    ".csv": lambda df, to: df.to_csv(to, index=False, float_format="%.6f"),
    ".parquet": lambda df, to: df.to_parquet(to, index=False),
    ".jsonl": lambda df, to: df.to_json(to, orient="records", lines=True, force_ascii=False),
}


def read_texts(path: Path, columns: table.Columns) -> pd.Series:
    """The reviews of a .txt file (one a line), or of any table download reads, its text in
    `columns`; anything unreadable is a PipelineError."""
    if path.suffix != ".txt" and table.suffix(path) is None:
        raise PipelineError(f"--file {path}: expected a .txt file or a {table.FORMATS}")
    if path.suffix != ".txt":
        table.check(path, f"--file {path}", columns)
        try:
            texts = [pc.fill_null(b.column("text"), "") for b in table.batches(path, columns)]
        except PipelineError as e:
            raise PipelineError(f"--file {e}") from None
        texts = pa.chunked_array(texts, pa.large_string()).to_pandas()
    elif not path.exists():
        raise PipelineError(f"--file {path} does not exist")
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PipelineError(f"--file {path} cannot be read ({e.strerror.lower()})") from None
        if b"\0" in data:
            raise PipelineError(f"--file {path}: not text (it holds NUL bytes, so it is binary)")
        try:
            texts = pd.Series(lines(data.decode("utf-8")), dtype=object)
        except UnicodeDecodeError as e:
            raise PipelineError(f"--file {path}: not UTF-8 text (byte {e.start})") from None
    if texts.empty:
        raise PipelineError(f"--file {path} holds no reviews")
    return texts.reset_index(drop=True)


def lines(text: str) -> list[str]:
    """A review per line, ended by \n or \r\n: not str.splitlines(), which also ends one at
    U+2028, U+2029, \x0b, \x0c, \x1c-\x1e and \x85, splitting a review that holds one."""
    found = text.split("\n")
    if found[-1] == "":  # what follows the last line's newline
        found.pop()
    return [line.removesuffix("\r") for line in found]


def check_output(path: Path) -> None:
    """Refused before any work: an unknown extension or a folder that does not exist."""
    if path.suffix not in WRITERS:
        raise PipelineError(f"--output {path}: expected a {', '.join(WRITERS)} file name")
    if not path.parent.is_dir():
        raise PipelineError(f"--output {path}: folder {path.parent} does not exist")


def probabilities(texts: pd.Series, trained: Scorer, batch_size: int) -> np.ndarray:
    out = np.empty(len(texts), dtype=np.float32)
    with tqdm(
        total=len(texts), unit=" reviews", disable=len(texts) <= CHUNK, file=sys.stderr
    ) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts.iloc[start : start + CHUNK]
            out[start : start + len(chunk)] = trained.probabilities(chunk, batch_size)
            bar.update(len(chunk))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zimdb.predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument("texts", nargs="*", help="reviews to score")
    parser.add_argument(
        "--file",
        type=Path,
        help=".txt (one review per line), or a table as download reads it: .csv, .tsv, .jsonl "
        "(each also .gz), .parquet or a folder of .parquet parts",
    )
    parser.add_argument(
        "--text-columns",
        nargs="+",
        default=["text"],
        metavar="NAME",
        help="a table's text: a column, or several joined with a space (default: text)",
    )
    parser.add_argument(
        "--column-names",
        nargs="+",
        default=[],
        metavar="NAME",
        help="the columns of a CSV or TSV file without a header row",
    )
    parser.add_argument(
        "--output", type=Path, help=".csv, .parquet or .jsonl (default: CSV on stdout)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL,
        help=f"model.pt, or the baseline's .skops (default {MODEL})",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if bool(args.texts) == bool(args.file):
        parser.error("give review texts as arguments or --file, not both and not neither")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.output:
        check_output(args.output)

    # Python gives an argument's undecodable bytes as lone surrogates, which no output format
    # takes: they are read back as a UTF-8 decoder reads bad bytes, each a U+FFFD.
    given = [os.fsencode(t).decode("utf-8", "replace") for t in args.texts]
    columns = table.Columns(
        tuple(args.text_columns),
        None,
        tuple(args.column_names),
        {"text": "--text-columns", "names": "--column-names"},
    )
    texts = read_texts(args.file, columns) if args.file else pd.Series(given, dtype=object)
    trained = files.load(args.model, resolve(args.device, "--device"))
    prob = probabilities(texts, trained, args.batch_size)
    result = pd.DataFrame({"text": texts, "label": labels(prob), "probability": prob})
    if args.output:
        with atomic_path(args.output) as tmp:
            WRITERS[args.output.suffix](result, tmp)
        print(f"wrote {len(result)} predictions to {args.output}", file=sys.stderr)
    else:
        WRITERS[".csv"](result, sys.stdout)


if __name__ == "__main__":
    run(main)
