"""The Stanford aclImdb archive as the download stage's source: a URL (downloaded once into
~/.cache/zimdb), a .tar.gz or its extracted folder, with each review's id, rating and movie."""

import re
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from zimdb.data.artifacts import atomic_path
from zimdb.errors import PipelineError

SPLITS = ("train", "test")
CACHE = Path.home() / ".cache" / "zimdb"
OFFLINE_HINT = (
    "to run from a local copy of the Stanford archive: "
    "`uv run dvc exp run -S download.source=aclimdb -S download.archive=/path/to/aclImdb_v1.tar.gz`"
)
# aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt; unsup/ and other files are not reviews
REVIEW = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
# aclImdb/{train,test}/urls_{pos,neg}.txt: line <id> is the IMDb page of review <id>'s movie
URLS = re.compile(r"(?:^|/)(train|test)/urls_(pos|neg)\.txt$")
TITLE = re.compile(r"/title/(tt\d+)")


def fetch(url: str) -> Path:
    """The archive at `url`, downloaded once into ~/.cache/zimdb."""
    dest = CACHE / Path(url).name
    if dest.exists():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length", 0)) or None
            with (
                open(tmp, "wb") as f,
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise PipelineError(f"cannot download {url}: {e}; {OFFLINE_HINT}") from None
    return dest


def wanted(name: str) -> bool:
    return bool(REVIEW.search(name) or URLS.search(name))


def archive_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every review file and URL list in a .tar.gz or extracted folder."""
    if path.is_dir():
        for file in sorted(path.rglob("*.txt")):
            if wanted(file.as_posix()):
                yield file.as_posix(), file.read_bytes()
        return
    try:
        # Streaming ("r|*"): one pass, no seeks back into the gzip stream (4.4 s -> 4.0 s here).
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PipelineError(
            f"{path}: not a readable tar archive ({type(e).__name__}: {e})"
        ) from None


def load(archive: str) -> dict[str, pd.DataFrame]:
    path = fetch(archive) if re.match(r"https?://", archive) else Path(archive)
    if not path.exists():
        raise PipelineError(f"download.archive: {path} does not exist")
    rows, undecodable, empty, movie_rows = [], [], [], []
    with tqdm(desc=f"reading {path.name}", unit=" reviews") as bar:
        for name, raw in archive_files(path):
            if urls := URLS.search(name):
                lines = raw.decode("utf-8", "replace").splitlines()
                titles = [m.group(1) if (m := TITLE.search(line)) else None for line in lines]
                movie_rows.extend((*urls.groups(), i, t) for i, t in enumerate(titles))
                continue
            bar.update()
            split, label, review_id, rating = REVIEW.search(name).groups()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                undecodable.append(name)
            if not text.strip():
                empty.append(name)  # no text to learn from or score: left out, reported below
                continue
            rows.append((split, int(review_id), int(rating), label, text))
    df = pd.DataFrame(rows, columns=["split", "id", "rating", "label", "text"])
    movies = pd.DataFrame(movie_rows, columns=["split", "label", "id", "movie"]).astype({"id": int})
    df = df.merge(movies, on=["split", "label", "id"], how="left")
    if undecodable:
        print(
            f"warning: {len(undecodable)} review(s) were not valid UTF-8 and were decoded with "
            f"replacement characters, e.g. {undecodable[0]}"
        )
    if empty:
        print(f"warning: left out {len(empty)} empty review file(s), e.g. {empty[0]}")
    unknown = df[df.movie.isna()]
    if len(unknown):
        s, label, i = unknown[["split", "label", "id"]].iloc[0]
        print(
            f"warning: no movie for {len(unknown)} review(s) (no line in urls_{{pos,neg}}.txt), "
            f"e.g. {s}/{label}/{i}_*.txt; split.group_by=movie will refuse them"
        )
    frames = {}
    for split in SPLITS:
        part = df[df.split == split].sort_values(["label", "id"], kind="stable")
        if part.empty:
            raise PipelineError(f"{path}: no reviews under {split}/pos or {split}/neg")
        frames[split] = part[["text", "label", "id", "rating", "movie"]]
    return frames
