"""MsDataset.load as the download stage's source: a ModelScope hub dataset (by default imdb,
down its loading script), each split as a table of text and label."""

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping

import pandas as pd

from zimdb.data.aclimdb import OFFLINE_HINT, SPLITS
from zimdb.errors import PipelineError, one_line

HUB_TIMEOUT = 5  # seconds to wait for the ModelScope hub to answer at all
# modelscope logs every step, repeats its warning about the trust given below, and logs each
# failure before raising it, which the stage then reports in a line of its own: quiet unless
# the user asks (read when modelscope is first imported; its progress bars are no logs).
os.environ.setdefault("MODELSCOPE_LOG_LEVEL", str(logging.CRITICAL))


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


def is_local(dataset: str) -> bool:
    """download.dataset written as a path (./imdb, ../imdb, /data/imdb, ~/imdb), not a hub id
    such as imdb or owner/imdb."""
    return dataset.startswith(("/", ".", "~"))


@contextlib.contextmanager
def in_empty_folder() -> Iterator[None]:
    """MsDataset.load, and the datasets library under it, read a name as a local path wherever
    one exists: run from an empty folder, the hub's imdb is read even beside a folder imdb."""
    with tempfile.TemporaryDirectory(prefix="zimdb-hub-") as empty, contextlib.chdir(empty):
        yield


def load(dataset: str) -> dict[str, pd.DataFrame]:
    if is_local(dataset):
        raise PipelineError(
            f"download.dataset: {dataset} is a local path; your own files are read with "
            "download.source table (download.train, download.test, download.labels)"
        )
    check_hub_reachable()

    import requests
    from modelscope.msdatasets import MsDataset  # slow to import, and only this source needs it

    frames = {}
    with in_empty_folder():
        for split in SPLITS:
            try:
                # The default, modelscope/imdb, is a loading script (imdb.py) published by
                # ModelScope's own org, and the locked modelscope refuses to run any script
                # unless trusted; download.dataset is the user's own choice of code to run too.
                loaded = MsDataset.load(dataset, split=split, trust_remote_code=True)
            except (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout) as e:
                raise PipelineError(
                    f"could not reach the ModelScope hub to load {dataset!r} "
                    f"({short_reason(e)}); {OFFLINE_HINT}"
                ) from None
            except Exception as e:  # an unknown id, a refused script: one line each
                raise PipelineError(
                    f"MsDataset.load({dataset!r}, split={split!r}) failed: "
                    f"{type(e).__name__}: {one_line(str(e))}; {OFFLINE_HINT}"
                ) from None
            frames[split] = to_frame(loaded, dataset, split)
    return frames
