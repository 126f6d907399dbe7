"""The default source: MsDataset.load('imdb') down its ModelScope-hub branch, as for a user with
a network (the hub faked at modelscope's HTTP requests, see FakeHub), or without one."""

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from stages import download
from tests.conftest import NEGATIVE, POSITIVE, ROOT, imdb_reviews, imdb_script, write_params
from zimdb.data import modelscope as modelscope_source
from zimdb.errors import run

OFFLINE_COMMAND = (
    "`uv run dvc exp run -S download.source=aclimdb -S download.archive=/path/to/aclImdb_v1.tar.gz`"
)


def expected(split: str) -> pd.DataFrame:
    """The raw table the default imdb_script's `split` gives: 1 positive, 0 negative."""
    return pd.DataFrame(
        {
            "text": [f"{t} ({split})" for t in POSITIVE + NEGATIVE],
            "label": [1] * len(POSITIVE) + [0] * len(NEGATIVE),
        }
    )


def fails(capsys) -> tuple[str, float]:
    """Run the stage as its __main__ does: the one stderr line it ends with, and its seconds."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        run(download.main)
    elapsed = time.perf_counter() - start
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err, elapsed


def test_default_source_loads_the_hub_dataset_through_its_loading_script(workdir, fake_hub):
    write_params(workdir)  # the project's own params: download.source modelscope, dataset imdb
    download.main()
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(f"data/raw/{split}.parquet"), expected(split))
    # The hub branch ran: the dataset resolved on the hub, its script fetched from the repo.
    assert ("GET", "/api/v1/datasets/modelscope/imdb", "") in fake_hub.requests
    assert ("GET", "/api/v1/datasets/modelscope/imdb/repo", "imdb.py") in fake_hub.requests
    assert fake_hub.unknown == []


def local_dataset(folder: Path) -> pd.DataFrame:
    """A folder MsDataset.load reads: {train,test}.csv of text and label, both the same."""
    table = pd.DataFrame({"text": ["a local review", "another local one"], "label": [1, 0]})
    folder.mkdir()
    for split in ("train", "test"):
        table.to_csv(folder / f"{split}.csv", index=False)
    return table


def test_a_folder_named_like_the_hub_dataset_does_not_replace_it(workdir, fake_hub):
    """MsDataset.load('imdb') reads ./imdb wherever it exists: the stage asks the hub anyway."""
    local_dataset(workdir / "imdb")
    write_params(workdir)  # download.dataset: imdb
    download.main()
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(f"data/raw/{split}.parquet"), expected(split))
    assert ("GET", "/api/v1/datasets/modelscope/imdb", "") in fake_hub.requests


@pytest.mark.parametrize("written", ["./imdb", "{workdir}/imdb", "~/imdb"])
def test_a_dataset_written_as_a_path_points_to_the_table_source(workdir, fake_hub, capsys, written):
    """Local files are the table source's (download.source: table), which DVC tracks; through
    MsDataset.load they were read whole, with two label spellings, and invisible to DVC."""
    local_dataset(workdir / "imdb")
    dataset = written.format(workdir=workdir)
    write_params(workdir, **{"download.dataset": dataset})
    err, _ = fails(capsys)
    assert err == (
        f"error: download.dataset: {dataset} is a local path; your own files are read with "
        "download.source table (download.train, download.test, download.labels)\n"
    )
    assert fake_hub.requests == []  # not even the check that the hub answers


def test_hub_dataset_comes_back_as_a_plain_datasets_dataset(workdir, fake_hub):
    """Unlike a local folder's: no to_hf_dataset(), which the stage once called on it."""
    import datasets
    from modelscope.msdatasets import MsDataset

    loaded = MsDataset.load("imdb", split="train", trust_remote_code=True)
    assert type(loaded) is datasets.Dataset and not hasattr(loaded, "to_hf_dataset")


def test_hub_refuses_the_script_unless_trusted(workdir, fake_hub):
    """Why the stage passes trust_remote_code=True."""
    from modelscope.msdatasets import MsDataset

    # As on a machine that never ran it: modelscope asks once per script (by its hash), and when
    # refused falls back to whatever copy of the dataset its cache holds.
    fake_hub.files["imdb.py"] += b"# refused\n"
    with pytest.raises(ValueError, match="requires executing the dataset script"):
        MsDataset.load("imdb", split="train", cache_dir=str(workdir / "fresh"))


@pytest.mark.parametrize("shape", ["Dataset", "MsDataset", "DatasetDict"])
def test_each_return_type_of_msdataset_load_gives_the_same_tables(
    workdir, fake_hub, monkeypatch, shape
):
    import datasets
    from modelscope.msdatasets import MsDataset

    hub_load = MsDataset.load

    def load(dataset, split, **kwargs):
        if shape == "DatasetDict":
            loaded = hub_load(dataset, **kwargs)  # every split, the unsupervised one included
            assert isinstance(loaded, datasets.DatasetDict)
            assert set(loaded) == {"train", "test", "unsupervised"}
            return loaded
        loaded = hub_load(dataset, split=split, **kwargs)
        return MsDataset.to_ms_dataset(loaded) if shape == "MsDataset" else loaded

    monkeypatch.setattr(MsDataset, "load", load)
    write_params(workdir)
    download.main()
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(f"data/raw/{split}.parquet"), expected(split))


def test_unsupervised_reviews_never_reach_the_raw_tables(workdir, fake_hub, capsys):
    """Not the unsupervised split, nor a label -1 row inside a labelled split."""
    fake_hub.files["imdb.py"] = imdb_script(
        imdb_reviews(extra_train=(("stray unlabelled", -1),))
    ).encode()
    write_params(workdir)
    download.main()
    raw = pd.concat(pd.read_parquet(f"data/raw/{split}.parquet") for split in ("train", "test"))
    assert not raw.text.str.contains("unlabelled").any()
    assert set(raw.label) == {0, 1} and len(raw) == len(expected("train")) * 2
    assert "imdb (train): left out 1 review(s) with label -1" in capsys.readouterr().out


def test_a_review_without_text_is_left_out_and_counted(workdir, fake_hub, capsys):
    """Never the string "None" (nor a null) in data/raw: which row, and how many, are told."""
    fake_hub.files["imdb.py"] = imdb_script(imdb_reviews(extra_train=((None, "pos"),))).encode()
    write_params(workdir)
    download.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/raw/train.parquet"), expected("train"))
    out = capsys.readouterr().out
    assert (
        "train: 6 reviews (3 negative, 3 positive); left out 1 with no text (the first: row 6)\n"
        in out
    )


def test_label_names_not_their_order_decide_which_is_negative(workdir, fake_hub):
    fake_hub.files["imdb.py"] = imdb_script(names=("pos", "neg")).encode()  # 0 = positive here
    write_params(workdir)
    download.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/raw/train.parquet"), expected("train"))


def test_no_network_fails_fast_in_one_line_with_the_offline_command(workdir, fake_hub, capsys):
    fake_hub.offline = OSError(errno.ENETUNREACH, "Network is unreachable")
    write_params(workdir)
    err, elapsed = fails(capsys)
    assert err.startswith(
        "error: could not reach the ModelScope hub at https://modelscope.cn (Network is unreachable); "
    )
    assert OFFLINE_COMMAND in err
    assert elapsed < 2, f"{elapsed:.1f} s"
    assert len(fake_hub.requests) == 1  # the stage's one check, none of modelscope's retries


def test_a_hub_that_never_answers_fails_within_the_check_timeout(
    workdir, fake_hub, monkeypatch, capsys
):
    monkeypatch.setattr(modelscope_source, "HUB_TIMEOUT", 0.5)
    fake_hub.hang.set()
    write_params(workdir)
    err, elapsed = fails(capsys)
    assert (
        "could not reach the ModelScope hub at https://modelscope.cn (no answer within 0.5 s)"
        in err
    )
    assert OFFLINE_COMMAND in err
    assert elapsed < 2, f"{elapsed:.1f} s"


def test_losing_the_network_during_the_load_is_one_line(workdir, fake_hub, capsys):
    fake_hub.offline = OSError(errno.ECONNRESET, "Connection reset by peer")
    fake_hub.offline_from = "/api/v1/"  # the stage's check and modelscope's first request pass
    write_params(workdir)
    err, _ = fails(capsys)
    assert err.startswith(
        "error: could not reach the ModelScope hub to load 'imdb' (Connection reset by peer); "
    )
    assert OFFLINE_COMMAND in err


def test_unknown_dataset_id_is_one_line(workdir, fake_hub, capsys):
    write_params(workdir, **{"download.dataset": "no_such_dataset"})
    err, _ = fails(capsys)
    assert err.startswith("error: MsDataset.load('no_such_dataset', split='train') failed: ")
    assert "modelscope/no_such_dataset not found" in err and OFFLINE_COMMAND in err


def test_stage_without_a_network_tells_within_seconds(tmp_path):
    """The whole process, imports included, its requests going to a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    write_params(tmp_path)
    proxies = {"https_proxy": closed, "http_proxy": closed, "no_proxy": ""}
    env = (
        os.environ
        | proxies
        | {k.upper(): v for k, v in proxies.items()}
        | {"PYTHONPATH": str(ROOT)}
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "stages.download"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "could not reach the ModelScope hub at https://modelscope.cn (" in result.stderr
    assert OFFLINE_COMMAND in result.stderr
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert not (tmp_path / "data").exists()
