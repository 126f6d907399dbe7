"""download.source table: your own reviews as they come (CSV and TSV with or without a header,
JSON Lines, each also gzip-compressed, Parquet files and folders of Parquet parts), their columns
and labels mapped by params, ratings grouped into classes, and every mistake one line naming the
file; the files are DVC deps of download."""

import gzip
import json
import os
import re
import shlex
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import download
from tests.conftest import ROOT, RUN_TIMEOUT, dvc, make_project, python_env, run, write_params
from zimdb.data import table
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
FORMATS = [".csv", ".tsv", ".jsonl", ".csv.gz", ".tsv.gz", ".jsonl.gz", ".parquet", "parts"]


def write(df: pd.DataFrame, path, header: bool = True) -> None:
    """`df` as the file its name says: .csv, .tsv, .jsonl (each also .gz), .parquet, or, for
    any other name, a folder of two Parquet parts as Spark writes them."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        sep = "\t" if name.endswith(".tsv") else ","
        data = df.to_csv(index=False, header=header, sep=sep)
    elif name.endswith(".jsonl"):
        data = df.to_json(orient="records", lines=True)
    elif name.endswith(".parquet"):
        return df.to_parquet(path, index=False)
    else:
        path.mkdir()
        half = len(df) // 2
        df.iloc[:half].to_parquet(path / "part-00000-a1.snappy.parquet", index=False)
        df.iloc[half:].to_parquet(path / "part-00001-a1.snappy.parquet", index=False)
        (path / "_SUCCESS").write_bytes(b"")
        (path / ".part-00000-a1.snappy.parquet.crc").write_bytes(b"crc")
        return None
    raw = data.encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


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


def raw(split: str = "train") -> pd.DataFrame:
    return pd.read_parquet(f"data/raw/{split}.parquet")


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_the_same_raw_tables(workdir, capsys, kind):
    train, test = workdir / f"train{kind}", workdir / f"test{kind}"
    write(REVIEWS, train)
    write(REVIEWS.iloc[::-1], test)
    use(workdir, train, test)
    download.main()
    assert list(raw().columns) == ["text", "label"]  # the title and other columns are left alone
    assert raw().text.tolist() == REVIEWS.text.tolist()
    assert raw().label.tolist() == [1, 0, 1, 0, 1, 0]
    assert raw("test").label.tolist() == [0, 1, 0, 1, 0, 1]
    assert "train: 6 reviews (3 negative, 3 positive)" in capsys.readouterr().out


def test_a_folder_of_parts_is_one_table_whatever_its_name_hive_partitions_included(workdir):
    spark = workdir / "train.parquet"  # Spark names its output folder like a file
    write(REVIEWS, spark)
    hive = workdir / "by_label"
    pq.write_to_dataset(
        pa.Table.from_pandas(REVIEWS, preserve_index=False), hive, partition_cols=["label"]
    )
    assert sorted(p.name for p in hive.iterdir()) == ["label=1", "label=2"]
    use(workdir, spark, hive)
    download.main()
    assert raw().text.tolist() == REVIEWS.text.tolist()
    test = raw("test")  # the label comes from the folders' names, one label's parts at a time
    assert sorted(zip(test.text, test.label, strict=True)) == sorted(
        zip(REVIEWS.text, REVIEWS.label - 1, strict=True)
    )


def test_amazon_polarity_as_distributed_headerless_title_and_text_joined(workdir):
    """label, title, text and no header row: the columns named by params, the title and text
    joined with a space (never two words fused), a missing title skipped."""
    amazon = REVIEWS[["label", "title", "text"]].copy()
    amazon.loc[1, "title"] = None
    write(amazon, workdir / "train.csv", header=False)
    write(amazon, workdir / "test.csv", header=False)
    use(
        workdir,
        workdir / "train.csv",
        workdir / "test.csv",
        **{
            "download.column_names": ["label", "title", "text"],
            "download.text_columns": ["title", "text"],
        },
    )
    download.main()
    texts = raw().text.tolist()
    assert texts[0] == "t1 Loved it, a <b>great</b> film"
    assert texts[1] == "Dull and far\ntoo long"  # no title: the text alone
    assert len(raw()) == 6  # the first row is a review, not a header


def test_the_label_and_text_columns_are_named_by_params(workdir):
    renamed = REVIEWS.rename(columns={"text": "review", "label": "sentiment"})
    write(renamed, workdir / "train.jsonl")
    write(renamed, workdir / "test.jsonl")
    use(
        workdir,
        workdir / "train.jsonl",
        workdir / "test.jsonl",
        **{"download.text_columns": ["review"], "download.label_column": "sentiment"},
    )
    download.main()
    assert raw().text.tolist() == REVIEWS.text.tolist()


def test_label_names_are_matched_whatever_their_case_and_spaces(workdir):
    named = REVIEWS.assign(label=REVIEWS.label.map({1: " Neg", 2: "POS "}))
    write(named, workdir / "train.csv")
    write(named, workdir / "test.csv")
    use(workdir, workdir / "train.csv", workdir / "test.csv", labels=("neg", "pos"))
    download.main()
    assert raw("test").label.tolist() == [1, 0, 1, 0, 1, 0]


STARS = pd.DataFrame(
    {
        "label": [1, 2, 3, 4, 5, 3, 5, 1],
        "text": ["awful", "poor", "so so", "good", "superb", "meh", "great", "dreadful"],
    }
)


def test_ratings_are_grouped_into_classes_and_a_skipped_rating_is_counted(workdir, capsys):
    write(STARS, workdir / "train.csv")
    write(STARS.iloc[:5], workdir / "test.csv")
    use(
        workdir,
        workdir / "train.csv",
        workdir / "test.csv",
        labels=([1, 2], [4, 5]),
        **{"download.skip_labels": [3]},
    )
    download.main()
    assert raw().text.tolist() == ["awful", "poor", "good", "superb", "great", "dreadful"]
    assert raw().label.tolist() == [0, 0, 1, 1, 1, 0]
    out = capsys.readouterr().out
    assert "train: 6 reviews (3 negative, 3 positive); left out 2 of a skipped label" in out
    assert "test: 4 reviews (2 negative, 2 positive); left out 1 of a skipped label" in out


def test_a_rating_outside_the_classes_and_not_skipped_is_named(workdir, capsys):
    write(STARS, workdir / "train.csv")
    write(STARS, workdir / "test.csv")
    use(workdir, workdir / "train.csv", workdir / "test.csv", labels=([1, 2], [4, 5]))
    assert fails(capsys) == (
        f"{workdir / 'train.csv'}: row 2 has the unknown label '3'; download.labels maps 1, 2 "
        "to negative and 4, 5 to positive"
    )


@pytest.mark.parametrize("kind", FORMATS)
def test_null_empty_and_blank_texts_are_left_out_and_counted_alike(workdir, capsys, kind):
    blanks = REVIEWS.copy()
    blanks["text"] = blanks.text.astype(object)
    blanks.loc[1, "text"], blanks.loc[3, "text"], blanks.loc[4, "text"] = None, "", " \t\n "
    write(blanks, workdir / f"train{kind}")
    write(REVIEWS, workdir / f"test{kind}")
    use(workdir, workdir / f"train{kind}", workdir / f"test{kind}")
    download.main()
    assert raw().text.tolist() == [REVIEWS.text[i] for i in (0, 2, 5)]
    out = capsys.readouterr().out
    assert "train: 3 reviews (1 negative, 2 positive); left out 3 with no text (the first: " in out


def test_a_split_with_no_word_stops_at_download_naming_the_file(workdir, capsys):
    wordless = REVIEWS.assign(text=["123", "!!!", "<br />", "42 :-)", "…", "☺"])
    write(wordless, workdir / "train.csv")
    write(REVIEWS, workdir / "test.csv")
    use(workdir, workdir / "train.csv", workdir / "test.csv")
    assert fails(capsys).startswith(f"{workdir / 'train.csv'}: no review holds a word")


def test_the_limit_keeps_both_classes_balanced(workdir):
    write(REVIEWS, workdir / "train.jsonl")
    write(REVIEWS, workdir / "test.jsonl")
    use(workdir, workdir / "train.jsonl", workdir / "test.jsonl", **{"download.limit": 4})
    download.main()
    assert sorted(raw().label) == [0, 0, 1, 1]


@pytest.mark.parametrize("kind", [".csv", ".jsonl.gz"])
def test_a_row_of_64_mb_is_read(workdir, kind, monkeypatch):
    """Arrow's readers refuse a row longer than their block: the file is read again with
    larger blocks, the rows already given skipped."""
    huge = "a good film " * (64 * 2**20 // 12 + 1)
    df = pd.concat([REVIEWS, REVIEWS.iloc[:1].assign(text=huge), REVIEWS], ignore_index=True)
    write(df, workdir / f"train{kind}")
    monkeypatch.setattr(table, "BLOCK", 1 << 16)  # and smaller blocks than the stage's
    batches = table.batches(workdir / f"train{kind}", table.Columns())
    texts = [text for batch in batches for text in batch.column("text").to_pylist()]
    assert len(texts) == 13 and texts[6] == huge
    assert texts[:6] == texts[7:] == REVIEWS.text.tolist()


def broken(workdir, name: str, content, **overrides) -> str:
    """The train file as `content` (bytes, a DataFrame written in its format, or None: no
    file at all), and a good test file."""
    path = workdir / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write(content, path)
    write(REVIEWS, workdir / "test.csv")
    use(workdir, path, workdir / "test.csv", **overrides)
    return str(path)


HEADERLESS = (
    REVIEWS[["label", "title", "text"]]
    .assign(text="a very long review " * 40)
    .to_csv(index=False, header=False)
    .encode()
)
NESTED_LABEL = REVIEWS.assign(label=[{"stars": s} for s in REVIEWS.label])


@pytest.mark.parametrize(
    ("name", "content", "overrides", "message"),
    [
        ("train.csv", None, {}, "download.train: {path} does not exist"),
        (
            "train.xlsx",
            b"PK",
            {},
            "download.train: {path} is not a .csv, .tsv or .jsonl (each also .gz), .parquet, "
            "or a folder of .parquet parts",
        ),
        ("train.csv", b"", {}, "download.train: {path} is empty"),
        ("train.csv", b"text,label\n", {}, "{path}: holds no reviews"),
        (
            "train.csv.gz",
            gzip.compress(b"", mtime=0),
            {},
            "{path}: not a readable CSV (gzip) file (",
        ),
        ("train.csv.gz", b"not gzip at all", {}, "{path}: not a readable CSV (gzip) file ("),
        (
            "train.parquet",
            REVIEWS[["title", "label"]],
            {},
            "{path}: no column 'text', which download.text_columns names (found 'title', 'label')",
        ),
        (
            "train.jsonl",
            REVIEWS[["text"]],
            {},
            "{path}: no column 'label', which download.label_column names (found 'text')",
        ),
        (
            "train.csv",
            b"text, label \nfine,1\n",
            {},
            "{path}: no column 'label', which download.label_column names (found 'text', "
            "' label '); did you mean ' label '?",
        ),
        (
            "train.csv",
            b"Text,Label\nfine,1\n",
            {},
            "{path}: no column 'text', which download.text_columns names (found 'Text', "
            "'Label'); did you mean 'Text'?",
        ),
        (
            "train.csv",
            HEADERLESS,
            {},
            "{path}: no column 'text', which download.text_columns names (found '2', 't1', "
            "'a very long review a very lon…'); if the file has no header row, name its columns "
            "with download.column_names",
        ),
        (
            "train.csv",
            b"text,label,text\na,1,b\n",
            {},
            "{path}: column 'text' appears 2 times",
        ),
        (
            "train.jsonl",
            b'{"text": "a", "label": 1, "text": "b"}\n',
            {},
            "{path}: column 'text' appears twice in a row",
        ),
        (
            "train.csv",
            b"1,two,three\n2,four\n",
            {"download.column_names": ["label", "title", "text"]},
            "{path}: a row has 2 fields where download.column_names names 3 columns (row: "
            "'2,four')",
        ),
        (
            "train.parquet",
            REVIEWS,
            {"download.column_names": ["text", "label"]},
            "download.column_names name the columns of a CSV or TSV file without a header row; "
            "{path} is Parquet, whose columns have names",
        ),
        (
            "train.jsonl",
            REVIEWS.assign(label=[[1], [2], [1], [2], [1], [2]]),
            {},
            "{path}: column 'label' holds list<item: int64>, not one plain value (a number or "
            "a string) per row",
        ),
        (
            "train.parquet",
            NESTED_LABEL,
            {},
            "{path}: column 'label' holds struct<stars: int64>, not one plain value",
        ),
        (
            "train.csv",
            "text,label\ncafé,1\n".encode("latin-1"),
            {},
            "{path}: not UTF-8 text (",
        ),
        ("train.csv", "tëxt,label\nfine,1\n".encode("latin-1"), {}, "{path}: not UTF-8 text ("),
        (
            "train.tsv",
            "text\tlabel\nfine\t1\n".encode("utf-16"),
            {},
            "{path}: UTF-16 text; files are read as UTF-8: convert it, e.g. `iconv -f utf-16 "
            "-t utf-8`",
        ),
        (
            "train.jsonl",
            '{"text": "café", "label": 1}\n'.encode("latin-1"),
            {},
            "{path}: not UTF-8",
        ),
        (
            "train.csv",
            REVIEWS.assign(label=[2, 1, 2, 3, 2, 1]),
            {},
            "{path}: row 3 has the unknown label '3'; download.labels maps 1 to negative and 2 "
            "to positive",
        ),
        (
            "train.parquet",
            REVIEWS.assign(label=2),
            {},
            "{path}: every review is positive; both classes are needed",
        ),
        (
            "train.parquet",
            b"PAR1 not a parquet file",
            {},
            "{path}: not a readable Parquet file (",
        ),
        (
            "train.jsonl",
            b'{"text": "a", "label": 1}\n{"text": ',
            {},
            "{path}: not a readable JSON Lines file (",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_file(
    workdir, capsys, name, content, overrides, message
):
    path = broken(workdir, name, content, **overrides)
    err = fails(capsys)
    assert err.startswith(message.format(path=path)), err


def test_quoted_content_is_cut_to_about_80_characters(workdir, capsys):
    row = "x" * 5000
    broken(workdir, "train.csv", f"label,text\n1,{row},extra\n".encode())
    err = fails(capsys)
    assert len(err) < len(str(workdir)) + 200, err
    assert "xxxxxxxxxx…" in err, err  # the row is quoted, and the cut marked


def test_a_file_that_cannot_be_read_is_one_line(workdir, capsys, monkeypatch):
    secret = workdir / "train.csv"
    write(REVIEWS, secret)
    secret.chmod(0)
    if os.access(secret, os.R_OK):  # root reads any file: the refusal others get, made here

        def refused(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(table, "open", refused, raising=False)
    use(workdir, secret, secret)
    assert fails(capsys) == f"download.train: {secret} cannot be read (permission denied)"


def test_a_part_without_a_wanted_column_is_one_line(workdir, capsys):
    """The folder's schema comes from its first part: a later one may lack a column."""
    folder = workdir / "train"
    folder.mkdir()
    REVIEWS.to_parquet(folder / "part-0.parquet")
    REVIEWS[["title", "label"]].to_parquet(folder / "part-1.parquet")
    broken(workdir, "train", None)
    assert fails(capsys) == (
        f"{folder}: the part {folder / 'part-1.parquet'} has no column 'text', which other parts "
        "have (found 'title', 'label')"
    )


def test_labels_that_are_bytes_but_not_utf8_are_one_line(workdir, capsys):
    path = broken(workdir, "train.parquet", REVIEWS.assign(label=[b"\xff"] * len(REVIEWS)))
    err = fails(capsys)
    assert path in err and err.endswith("its labels are not UTF-8 text"), err


def test_a_folder_with_no_parquet_parts_is_one_line(workdir, capsys):
    folder = workdir / "train"
    folder.mkdir()
    write(REVIEWS, folder / "part-0.csv")
    broken(workdir, "train", None)
    assert fails(capsys).startswith(f"download.train: {folder} is a folder with no .parquet parts")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("download.labels", [[1, 2], [2, 3]], "download.labels must be two classes"),
        ("download.labels", [[], [1]], "download.labels must be two classes"),
        ("download.text_columns", "text", "download.text_columns must be a list of one or more"),
        ("download.text_columns", [], "download.text_columns must be a list of one or more"),
        ("download.column_names", ["a", "a"], "download.column_names must be a list of column"),
        ("download.skip_labels", [2], "params.yaml: download.skip_labels: 2 is a class's label"),
    ],
)
def test_bad_table_params_are_one_line(workdir, capsys, key, value, message):
    write(REVIEWS, workdir / "train.csv")
    use(workdir, workdir / "train.csv", workdir / "train.csv", **{key: value})
    assert message in fails(capsys)


def test_an_edited_file_reruns_download_and_nothing_else_changed_does(tmp_path):
    """The files are download's DVC deps (dvc.yaml templates them from params.yaml), a folder
    of parts as a folder."""
    root = make_project(tmp_path / "project")
    write(REVIEWS, root / "reviews.csv")
    write(REVIEWS, root / "parts")
    params = {"download.source": "table", "download.train": "reviews.csv"}
    write_params(root, **params, **{"download.test": "parts", "download.labels": [1, 2]})
    run(["git", "add", "-A"], root)
    dvc("repro", "download", cwd=root)
    assert json.loads(dvc("status", "download", "--json", cwd=root).stdout) == {}
    write(REVIEWS.assign(label=REVIEWS.label[::-1].to_numpy()), root / "reviews.csv")
    changed = json.loads(dvc("status", "download", "--json", cwd=root).stdout)
    assert {"changed deps": {"reviews.csv": "modified"}} in changed["download"]
    assert "Running stage 'download'" in dvc("repro", "download", cwd=root).stdout
    assert pd.read_parquet(root / "data/raw/train.parquet").label.tolist() == [0, 1, 0, 1, 0, 1]
    REVIEWS.iloc[:2].to_parquet(root / "parts/part-00002-a1.snappy.parquet")
    changed = json.loads(dvc("status", "download", "--json", cwd=root).stdout)
    assert {"changed deps": {"parts": "modified"}} in changed["download"]


def readme_command(heading: str, files: dict[str, str]) -> list[str]:
    """The README's `dvc exp run` command in the paragraph after `heading`, its paths replaced
    by `files` (README path -> path here)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    line = re.search(r"uv run dvc exp run(?:[^\n\\]|\\\n)*", section)[0]
    for old, new in files.items():
        assert old in line, (old, line)
        line = line.replace(old, new)
    return shlex.split(line.replace("\\\n", " "))


@pytest.mark.parametrize(
    ("heading", "data", "kept"),
    [
        ("Amazon's polarity set as distributed", REVIEWS[["label", "title", "text"]], 6),
        ("Ratings", STARS, 6),
    ],
)
def test_the_readme_commands_run_as_written(clean_project, heading, data, kept):
    """Each command of the README's "Your own reviews", its paths replaced by files of the
    shape it names (no header row), through the whole pipeline of the small project."""
    root = clean_project
    readme = (ROOT / "README.md").read_text()
    paths = re.findall(r"/data/\S+?\.csv", readme[readme.index(heading) :])[:2]
    files = {}
    for path, rows in zip(paths, (data, data.iloc[::-1]), strict=True):
        local = root / os.path.basename(path)
        write(pd.concat([rows] * 5, ignore_index=True), local, header=False)
        files[path] = str(local)
    cmd = readme_command(heading, files)
    done = subprocess.run(
        cmd[2:] if cmd[:2] == ["uv", "run"] else cmd,
        cwd=root,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(pd.read_parquet(root / "data/raw/train.parquet")) == 5 * kept
    assert (root / "dvclive/evaluate/metrics.json").exists()
