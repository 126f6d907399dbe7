"""Stage download: IMDB reviews from ModelScope or the Stanford aclImdb archive.

Writes data/raw/{train,test}.parquet: text, label (0 negative, 1 positive) and, where the source
has them, id, rating and movie (the IMDb title id, from the archive's urls_{pos,neg}.txt).
"""

import logging
import os
import re
import tarfile
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from zimdb import params
from zimdb.artifacts import atomic_path, write_table
from zimdb.errors import PipelineError, run
from zimdb.paths import RAW

SPLITS = ("train", "test")
LABELS = {0: 0, 1: 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
CACHE = Path.home() / ".cache" / "zimdb"
OFFLINE_HINT = (
    "to run from a local copy of the Stanford archive: "
    "`uv run dvc exp run -S download.source=aclimdb -S download.archive=/path/to/aclImdb_v1.tar.gz`"
)
HUB_TIMEOUT = 5  # seconds to wait for the ModelScope hub to answer at all
# modelscope logs every step, repeats its warning about the trust given below, and logs each
# failure before raising it, which the stage then reports in a line of its own: quiet unless
# the user asks (read when modelscope is first imported; its progress bars are no logs).
os.environ.setdefault("MODELSCOPE_LOG_LEVEL", str(logging.CRITICAL))
# aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt; unsup/ and other files are not reviews
REVIEW = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
# aclImdb/{train,test}/urls_{pos,neg}.txt: line <id> is the IMDb page of review <id>'s movie
URLS = re.compile(r"(?:^|/)(train|test)/urls_(pos|neg)\.txt$")
TITLE = re.compile(r"/title/(tt\d+)")


def map_labels(labels: pd.Series, origin: str) -> pd.Series:
    """0/1 or 'pos'/'neg' (as the sources give them) to 0/1; anything else is refused."""
    mapped = labels.map(lambda v: v.lower() if isinstance(v, str) else v).map(LABELS)
    if mapped.isna().any():
        bad = labels[mapped.isna()].iloc[0]
        raise PipelineError(
            f"{origin}: unknown label {bad if not isinstance(bad, str) else repr(bad)}; "
            "accepted: 0, 1, 'neg', 'pos', 'negative', 'positive'"
        )
    return mapped.astype("int64")


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def short_reason(error: BaseException) -> str:
    """Why a network call failed, short and in English: the innermost OS error's text (e.g.
    'Connection refused'), or 'timed out'; modelscope's own messages can be Chinese."""
    import requests

    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in reversed(chain):
        if isinstance(link, OSError) and link.strerror:
            return link.strerror
    if any(isinstance(link, TimeoutError | requests.Timeout) for link in chain):
        return "timed out"
    text = one_line(str(error), 150)
    return text if text and text.isascii() else type(error).__name__


def check_hub_reachable() -> None:
    """Offline, MsDataset.load retries for 15 s or more and then fails in Chinese; one HEAD
    request to the endpoint modelscope reads from first (it falls back to its other site only
    when a dataset is missing, never when the first is unreachable) tells within seconds."""
    import requests
    from modelscope.hub.api import HubApi

    endpoint = HubApi().endpoint
    outcome: list[BaseException | None] = []  # None: the hub answered

    def head() -> None:
        try:
            requests.head(endpoint, timeout=HUB_TIMEOUT, allow_redirects=False)
            outcome.append(None)
        except requests.RequestException as e:
            outcome.append(e)

    # A thread, because requests' timeout leaves out the DNS lookup, which can hang far longer.
    probe = threading.Thread(target=head, daemon=True)
    probe.start()
    probe.join(HUB_TIMEOUT)
    if outcome == [None]:
        return
    reason = short_reason(outcome[0]) if outcome else f"no answer within {HUB_TIMEOUT:g} s"
    raise PipelineError(
        f"could not reach the ModelScope hub at {endpoint} ({reason}); {OFFLINE_HINT}"
    )


def to_frame(loaded: object, dataset: str, split: str) -> pd.DataFrame:
    """The rows of `split` from what MsDataset.load returned: a datasets.Dataset for hub
    datasets, an MsDataset for local folders, or one of them per split in a dict."""
    from datasets import ClassLabel, Dataset
    from modelscope.msdatasets import MsDataset

    if isinstance(loaded, Mapping):  # DatasetDict, or MsDataset.to_ms_dataset's dict
        if split not in loaded:
            raise PipelineError(f"{dataset}: no split {split!r}; found {sorted(loaded)}")
        loaded = loaded[split]
    if isinstance(loaded, MsDataset):
        loaded = loaded.to_hf_dataset()
    if not isinstance(loaded, Dataset):
        raise PipelineError(
            f"{dataset} ({split}): MsDataset.load returned a {type(loaded).__name__}"
        )
    df = loaded.to_pandas()
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise PipelineError(
            f"{dataset} ({split}): no column {sorted(missing)[0]!r}; found {list(df.columns)}"
        )
    df = df[["text", "label"]]
    # The imdb script's unsupervised reviews carry label -1 ("no label"): nothing to learn or score.
    unlabelled = df.label.isin([-1])
    if unlabelled.any():
        print(f"warning: {dataset} ({split}): left out {unlabelled.sum()} review(s) with label -1")
        df = df[~unlabelled]
    feature = loaded.features["label"]
    if isinstance(feature, ClassLabel):  # its names say which integer is negative, not the order
        names = dict(enumerate(feature.names))
        df = df.assign(label=df.label.map(lambda i: names.get(i, i)))
    return df


def from_modelscope(dataset: str) -> dict[str, pd.DataFrame]:
    if not Path(dataset).expanduser().exists():  # a hub id, not a local folder
        check_hub_reachable()

    import requests
    from modelscope.msdatasets import MsDataset  # slow to import, and only this source needs it

    frames = {}
    for split in SPLITS:
        try:
            # The default, modelscope/imdb, is a loading script (imdb.py) published by
            # ModelScope's own org, and the locked modelscope refuses to run any script unless
            # trusted; download.dataset is the user's own choice of code to run as well.
            loaded = MsDataset.load(dataset, split=split, trust_remote_code=True)
        except (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout) as e:
            raise PipelineError(
                f"could not reach the ModelScope hub to load {dataset!r} ({short_reason(e)}); "
                f"{OFFLINE_HINT}"
            ) from None
        except Exception as e:  # unknown id, refused script, bad local folder: one line each
            raise PipelineError(
                f"MsDataset.load({dataset!r}, split={split!r}) failed: "
                f"{type(e).__name__}: {one_line(str(e))}; {OFFLINE_HINT}"
            ) from None
        frames[split] = to_frame(loaded, dataset, split)
    return frames


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


def from_aclimdb(archive: str) -> dict[str, pd.DataFrame]:
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


def subset(df: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` rows, as balanced across labels as the counts allow, the same every run."""
    if limit == 0 or len(df) <= limit:
        return df
    per_label = df.groupby("label").size().sort_index()
    take = {label: 0 for label in per_label.index}
    while sum(take.values()) < limit:  # round-robin so an odd limit or a small class still fits
        for label in take:
            if take[label] < per_label[label] and sum(take.values()) < limit:
                take[label] += 1
    parts = [df[df.label == label].sample(n=n, random_state=0) for label, n in take.items()]
    return pd.concat(parts).sort_index()


def main() -> None:
    p = params.load("download")
    if p.source == "modelscope":
        frames, origin = from_modelscope(p.dataset), p.dataset
    else:
        frames, origin = from_aclimdb(p.archive), p.archive
    out = {}
    for split, df in frames.items():  # check both splits before writing either
        df = df.reset_index(drop=True)
        df["label"] = map_labels(df["label"], f"{origin} ({split})")
        df = subset(df, p.limit).reset_index(drop=True)
        if df.label.nunique() < 2:
            raise PipelineError(
                f"{origin} ({split}): only label {df.label.iloc[0]} left after download.limit="
                f"{p.limit}; both classes are needed"
            )
        out[split] = df.assign(text=df["text"].astype(str))
    for split, df in out.items():
        write_table(df, RAW / f"{split}.parquet")
        counts = df.label.value_counts()
        print(
            f"{split}: {len(df)} reviews ({counts.get(0, 0)} negative, {counts.get(1, 0)} positive)"
        )


if __name__ == "__main__":
    run(main)
