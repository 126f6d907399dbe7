"""download.source table: your own reviews in CSV, Parquet or JSON Lines, their labels mapped by
download.labels, each mistake one line naming the file, and the files DVC deps of download."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import download
from tests.conftest import dvc, make_project, run, write_params
from zimdb.errors import run as run_stage
from zimdb.paths import RAW

# Amazon's and Yelp's polarity sets label 1 negative and 2 positive.
REVIEWS = pd.DataFrame(
    {
        "title": ["t1", "t2", "t3", "t4", "t5", "t6"],
        "text": [
            "Loved it, a <b>great</b> film",
            "Dull and far\ntoo long",  # a line break inside a review
            'A "classic", truly',
            "Awful, awful acting",
            "Quietly brilliant",
            "I want my money back",
        ],
        "label": [2, 1, 2, 1, 2, 1],
    }
)


def write(df: pd.DataFrame, path) -> None:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)


def use(workdir, train, test, labels=(1, 2), **overrides) -> None:
    write_params(
        workdir,
        **{
            "download.source": "table",
            "download.train": str(train),
            "download.test": str(test),
            "download.labels": list(labels),
        }
        | overrides,
    )


def fails(capsys) -> str:
    """The stage run as its __main__ runs it: its one line on stderr, and nothing written."""
    with pytest.raises(SystemExit) as stop:
        run_stage(download.main)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not list(RAW.glob("*"))
    return err.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_every_format_gives_the_same_raw_tables(workdir, capsys, suffix):
    train, test = workdir / f"train{suffix}", workdir / f"test{suffix}"
    write(REVIEWS, train)
    write(REVIEWS.iloc[::-1], test)
    use(workdir, train, test)
    download.main()
    raw = pd.read_parquet("data/raw/train.parquet")
    assert list(raw.columns) == ["text", "label"]  # the title and other columns are left alone
    assert raw.text.tolist() == REVIEWS.text.tolist()
    assert raw.label.tolist() == [1, 0, 1, 0, 1, 0]
    assert pd.read_parquet("data/raw/test.parquet").label.tolist() == [0, 1, 0, 1, 0, 1]
    assert "train: 6 reviews (3 negative, 3 positive)" in capsys.readouterr().out


def test_label_names_are_matched_whatever_their_case(workdir):
    named = REVIEWS.assign(label=REVIEWS.label.map({1: "Neg", 2: "POS"}))
    write(named, workdir / "train.csv")
    write(named, workdir / "test.csv")
    use(workdir, workdir / "train.csv", workdir / "test.csv", labels=("neg", "pos"))
    download.main()
    assert pd.read_parquet("data/raw/test.parquet").label.tolist() == [1, 0, 1, 0, 1, 0]


def test_a_review_without_text_is_left_out_with_a_warning(workdir, capsys):
    write(REVIEWS, workdir / "test.parquet")
    with_null = REVIEWS.assign(text=REVIEWS.text.where(REVIEWS.index != 3, None))
    write(with_null, workdir / "train.parquet")
    use(workdir, workdir / "train.parquet", workdir / "test.parquet")
    download.main()
    assert len(pd.read_parquet("data/raw/train.parquet")) == 5
    out = capsys.readouterr().out
    assert f"warning: {workdir / 'train.parquet'}: left out 1 review(s) with no text" in out
    assert "e.g. row 3" in out


def test_the_limit_keeps_both_classes_balanced(workdir):
    write(REVIEWS, workdir / "train.jsonl")
    write(REVIEWS, workdir / "test.jsonl")
    use(workdir, workdir / "train.jsonl", workdir / "test.jsonl", **{"download.limit": 4})
    download.main()
    assert sorted(pd.read_parquet("data/raw/train.parquet").label) == [0, 0, 1, 1]


def broken(workdir, name: str, content) -> str:
    """The train file as `content` (bytes, a DataFrame written in its format, or None: no
    file at all), and a good test file."""
    path = workdir / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write(content, path)
    write(REVIEWS, workdir / "test.csv")
    use(workdir, path, workdir / "test.csv")
    return str(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train.csv", None, "download.train: {path} does not exist"),
        (
            "train.tsv",
            b"text\tlabel\n",
            "download.train: {path} is not a .csv, .parquet or .jsonl file",
        ),
        ("train.csv", b"", "download.train: {path} is empty"),
        ("train.csv", b"text,label\n", "{path}: holds no reviews"),
        (
            "train.parquet",
            REVIEWS[["title", "label"]],
            "{path}: no column 'text' (found title, label)",
        ),
        ("train.jsonl", REVIEWS[["text"]], "{path}: no column 'label' (found text)"),
        (
            "train.csv",
            REVIEWS.assign(label=[2, 1, 2, 3, 2, 1]),
            "{path}: row 3 has the unknown label 3; download.labels maps 1 to negative and 2 to positive",
        ),
        (
            "train.parquet",
            REVIEWS.assign(label=2),
            "{path}: every review is positive; both classes are needed",
        ),
        ("train.parquet", b"PAR1 not a parquet file", "{path}: not a readable Parquet file ("),
        (
            "train.jsonl",
            b'{"text": "a", "label": 1}\n{"text": ',
            "{path}: not a readable JSON Lines file (",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_file(workdir, capsys, name, content, message):
    path = broken(workdir, name, content)
    err = fails(capsys)
    assert err.startswith(message.format(path=path)), err


def test_an_edited_file_reruns_download_and_nothing_else_changed_does(tmp_path):
    """The files are download's DVC deps (dvc.yaml templates them from params.yaml)."""
    root = make_project(tmp_path / "project")
    write(REVIEWS, root / "reviews.csv")
    params = {"download.source": "table", "download.train": "reviews.csv"}
    write_params(root, **params, **{"download.test": "reviews.csv", "download.labels": [1, 2]})
    run(["git", "add", "-A"], root)
    dvc("repro", "download", cwd=root)
    assert json.loads(dvc("status", "download", "--json", cwd=root).stdout) == {}
    write(REVIEWS.assign(label=REVIEWS.label[::-1].to_numpy()), root / "reviews.csv")
    changed = json.loads(dvc("status", "download", "--json", cwd=root).stdout)
    assert {"changed deps": {"reviews.csv": "modified"}} in changed["download"]
    assert "Running stage 'download'" in dvc("repro", "download", cwd=root).stdout
    assert pd.read_parquet(root / "data/raw/train.parquet").label.tolist() == [0, 1, 0, 1, 0, 1]


def test_parquet_is_read_a_batch_at_a_time(workdir, monkeypatch):
    """Files of any size pass through in batches (memory: tests/test_streaming.py)."""
    from zimdb.data import table

    monkeypatch.setattr(table, "ROWS", 2)
    pq.write_table(pa.Table.from_pandas(REVIEWS, preserve_index=False), workdir / "train.parquet")
    assert [len(b) for b in table.batches(workdir / "train.parquet")] == [2, 2, 2]
