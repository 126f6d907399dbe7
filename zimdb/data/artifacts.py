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


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_table(path: str | Path, stage: str, columns: dict[str, str]) -> pd.DataFrame:
    """A parquet table written by `stage`, checked to have `columns` of the given dtype kinds."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    try:
        df = pd.read_parquet(path)
    except (OSError, pa.ArrowException) as e:
        raise damaged(path, stage, f"not a readable parquet file ({e})") from None
    for name, kind in columns.items():
        if name not in df.columns:
            raise damaged(path, stage, f"column {name!r} is missing")
        if kind == "str":
            if not df[name].map(type).eq(str).all():
                raise damaged(path, stage, f"column {name!r} must hold strings")
        elif df[name].dtype.kind not in kind:
            raise damaged(path, stage, f"column {name!r} has dtype {df[name].dtype}")
    return df


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


def write_encoded(records: np.ndarray, path: str | Path) -> None:
    """One split's encoded reviews as one .npy: no timestamps, so reruns are byte-identical."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, records, allow_pickle=False)


def read_encoded(
    path: str | Path, vocab_size: int, max_len: int, stage: str = "encode"
) -> np.ndarray:
    """One split's encoded reviews, checked against the vocabulary and width they were made
    with (zimdb.data.encoding)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run `uv run dvc repro {stage}` first")
    try:
        records = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise damaged(path, stage, f"not a readable .npy file ({e})") from None
    names = records.dtype.names or ()
    if names != ("ids", "length", "label") or records.ndim != 1:
        raise damaged(path, stage, f"unexpected layout {records.dtype}")
    bad = (
        records.dtype["ids"].shape != (max_len,)
        or (records["length"] < 1).any()
        or (records["length"] > max_len).any()
        or (records["label"] > 1).any()
        or (len(records) and int(records["ids"].max()) >= vocab_size)
    )
    if bad:
        raise damaged(path, stage, "widths, lengths, labels or ids out of range for its encoding")
    return records
