"""Score reviews with the trained model: `uv run python -m zimdb.predict "Great film!"`.

Texts come as arguments or from --file (.txt, one review per line; .csv or .parquet with a `text`
column); text, label and probability (of positive) go to --output (.csv, .parquet or .jsonl, by
its extension) or to stdout as CSV. The vocabulary and encode settings come from the model file
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
from tqdm import tqdm

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


def read_texts(path: Path) -> pd.Series:
    """The reviews of a .txt, .csv or .parquet file; anything unreadable is a PipelineError."""
    if path.suffix not in (".txt", ".csv", ".parquet"):
        raise PipelineError(f"--file {path}: expected a .txt, .csv or .parquet file")
    if not path.is_file():
        raise PipelineError(f"--file {path} does not exist")
    try:
        if path.suffix == ".txt":
            data = path.read_bytes()
            if b"\0" in data:
                raise ValueError("it holds NUL bytes, so it is binary, not text")
            texts = pd.Series(lines(data.decode("utf-8")), dtype=object)
        elif path.suffix == ".csv":
            df = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8")
            texts = column(df, path)
        else:
            texts = column(pd.read_parquet(path), path).fillna("").astype(str)
    except PipelineError:
        raise
    except UnicodeDecodeError as e:
        raise PipelineError(f"--file {path}: not UTF-8 text (byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise PipelineError(f"--file {path} is empty") from None
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError) as e:
        what = {".csv": "a readable CSV file", ".parquet": "a parquet file"}.get(
            path.suffix, "text"
        )
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"--file {path}: not {what} ({reason})") from None
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


def column(df: pd.DataFrame, path: Path) -> pd.Series:
    if "text" not in df.columns:
        found = ", ".join(map(str, df.columns)) or "no columns"
        raise PipelineError(f"--file {path}: no `text` column (found {found})")
    return df["text"]


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
    parser.add_argument("--file", type=Path, help=".txt (one review per line), .csv or .parquet")
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
    texts = read_texts(args.file) if args.file else pd.Series(given, dtype=object)
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
