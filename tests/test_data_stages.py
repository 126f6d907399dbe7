"""download, clean, vocab and encode, each run as its main() in a temporary working folder."""

import pandas as pd
import pyarrow as pa
import pytest

from stages import clean, download, encode, vocab
from tests.conftest import movie_of, write_archive, write_params
from zimdb.data import raw
from zimdb.data.artifacts import open_encoded, read_vocab
from zimdb.data.encoding import Encoding, read_encoding
from zimdb.errors import PipelineError
from zimdb.paths import ENCODED, ENCODING


def test_labels_map_ints_and_strings_and_refuse_others():
    labels = pa.array(["0", "1", "pos", "neg", "POS", " negative "])
    every = pa.array([True] * 6)
    ids, skipped = raw.IMDB.ids(labels, every, "src", 0)
    assert ids.tolist() == [0, 1, 1, 0, 1, 0] and not skipped.any()
    with pytest.raises(PipelineError, match=r"src: row 11 has the unknown label 'meh'; accepted"):
        raw.IMDB.ids(pa.array(["pos", "meh"]), pa.array([True, True]), "src", 10)
    with pytest.raises(PipelineError, match="row 1 has the unknown label '2';"):
        raw.IMDB.ids(pa.array([0, 2]), pa.array([True, True]), "src", 0)
    # A row left out (no text) is not asked for its label.
    assert raw.IMDB.ids(pa.array([0, 2]), pa.array([True, False]), "src", 0)[0][0] == 0


def test_ratings_map_to_classes_and_skipped_ones_are_marked():
    stars = raw.Labels(("1", "2"), ("4", "5"), "accepted: stars", ("3",))
    ids, skipped = stars.ids(pa.array([1, 2, 3, 4, 5]), pa.array([True] * 5), "src", 0)
    assert ids[~skipped].tolist() == [0, 0, 1, 1] and skipped.tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(PipelineError, match="row 0 has the unknown label '6'; accepted: stars"):
        stars.ids(pa.array([6]), pa.array([True]), "src", 0)


def test_aclimdb_archive_to_raw_tables(workdir, capsys):
    archive = write_archive(workdir / "small.tar.gz", per_label=5)
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": str(archive)})
    download.main()
    train = pd.read_parquet("data/raw/train.parquet")
    assert len(train) == 10 and train.label.value_counts().to_dict() == {0: 5, 1: 5}
    assert set(train.columns) == {"text", "label", "id", "rating", "movie"}
    assert set(train[train.label == 1].rating) == {9} and set(train[train.label == 0].rating) == {2}
    assert train.movie.tolist() == [movie_of("train", i) for i in train.id]
    assert "train: 10 reviews (5 negative, 5 positive)" in capsys.readouterr().out


def test_reviews_without_a_url_line_have_no_movie_and_are_reported(workdir, capsys):
    archive = write_archive(
        workdir / "small.tar.gz",
        per_label=3,  # urls_{pos,neg}.txt have lines for ids 0-2 only
        extra={"aclImdb/train/pos/7_8.txt": b"a good film", "aclImdb/test/neg/9_1.txt": b"bad"},
    )
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": str(archive)})
    download.main()
    train, test = (pd.read_parquet(f"data/raw/{s}.parquet") for s in ("train", "test"))
    assert train.movie[train.id == 7].isna().all() and train.movie[train.id < 3].notna().all()
    assert test.movie[test.id == 9].isna().all() and test.movie[test.id < 3].notna().all()
    out = capsys.readouterr().out
    assert "warning: no movie for 2 review(s)" in out and "split.group_by=movie will refuse" in out


def test_aclimdb_extracted_folder_gives_the_same_tables(workdir):
    import tarfile

    archive = write_archive(workdir / "small.tar.gz", per_label=3)
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": str(archive)})
    download.main()
    from_tar = pd.read_parquet("data/raw/test.parquet")
    # extraction filters came in Python 3.11.4; the project runs on any 3.11
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "x", **safe)
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": "x/aclImdb"})
    download.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/raw/test.parquet"), from_tar)


def test_limit_is_balanced_and_deterministic(workdir):
    archive = write_archive(workdir / "small.tar.gz", per_label=6)
    write_params(
        workdir,
        **{"download.source": "aclimdb", "download.archive": str(archive), "download.limit": 5},
    )
    download.main()
    first = pd.read_parquet("data/raw/train.parquet")
    assert len(first) == 5 and sorted(first.label.value_counts().tolist()) == [2, 3]
    download.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/raw/train.parquet"), first)


def test_limit_leaving_one_class_is_refused(workdir):
    archive = write_archive(workdir / "small.tar.gz")
    write_params(
        workdir,
        **{"download.source": "aclimdb", "download.archive": str(archive), "download.limit": 1},
    )
    with pytest.raises(PipelineError, match="both classes are needed"):
        download.main()


def test_shared_archive_has_the_full_dataset(workdir, shared_archive):
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": str(shared_archive)})
    download.main()
    movies = {}
    for split in ("train", "test"):
        df = pd.read_parquet(f"data/raw/{split}.parquet")
        assert df.label.value_counts().to_dict() == {0: 12500, 1: 12500}
        assert df.rating[df.label == 1].between(7, 10).all()
        assert df.rating[df.label == 0].between(1, 4).all()
        assert df.movie.notna().all() and df.movie.value_counts().max() <= 30  # the README's cap
        movies[split] = set(df.movie)
    assert len(movies["train"] & movies["test"]) <= 1  # "disjoint", but for one title here


def _raw(workdir, rows):
    (workdir / "data/raw").mkdir(parents=True)
    for split in ("train", "test"):
        pd.DataFrame(rows).to_parquet(workdir / f"data/raw/{split}.parquet")


def test_clean_split_is_stratified_and_deterministic(workdir):
    words = [f"{a}{b}" for a in "abcd" for b in "abcdefghij"]  # 40 distinct letter-only words
    _raw(workdir, {"text": [f"<br/>Review {w}!" for w in words], "label": [0, 1] * 20})
    write_params(workdir, **{"split.val_fraction": 0.25})
    clean.main()
    train, val = (pd.read_parquet(f"data/clean/{s}.parquet") for s in ("train", "val"))
    assert len(train) == 30 and len(val) == 10 and val.label.sum() == 5
    assert set(train.text) | set(val.text) == {f"review {w}" for w in words}
    clean.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/clean/val.parquet"), val)


def test_clean_split_by_movie_keeps_every_movie_on_one_side(workdir):
    movies = [f"tt{m}" for m in range(20) for _ in range(m % 4 + 1)]  # 1 to 4 reviews a movie
    texts = [f"review {chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(len(movies))]
    _raw(workdir, {"text": texts, "label": [i % 2 for i in range(len(movies))], "movie": movies})
    write_params(workdir, **{"split.val_fraction": 0.2, "split.group_by": "movie"})
    clean.main()
    raw = pd.read_parquet("data/raw/train.parquet")
    train, val = (pd.read_parquet(f"data/clean/{s}.parquet") for s in ("train", "val"))
    movie = dict(zip(raw.text, raw.movie, strict=True))
    assert not {movie[t] for t in train.text} & {movie[t] for t in val.text}
    assert sorted([*train.text, *val.text]) == sorted(texts)
    # whole movies are drawn until they hold the fraction: val overshoots by less than one movie
    assert 0.2 * len(raw) <= len(val) < 0.2 * len(raw) + 4
    clean.main()
    pd.testing.assert_frame_equal(pd.read_parquet("data/clean/val.parquet"), val)
    write_params(workdir, **{"split.val_fraction": 0.2, "split.group_by": "movie", "split.seed": 7})
    clean.main()
    assert set(pd.read_parquet("data/clean/val.parquet").text) != set(val.text)


def test_clean_split_by_movie_refuses_reviews_without_a_movie(workdir):
    _raw(workdir, {"text": ["good", "fine", "bad", "awful"], "label": [1, 1, 0, 0]})
    write_params(workdir, **{"split.group_by": "movie"})
    with pytest.raises(
        PipelineError,
        match=r"split.group_by=movie: data/raw/train.parquet has no movie for 4 review\(s\); "
        r"only download.source=aclimdb gives movies",
    ):
        clean.main()
    assert not (workdir / "data/clean").exists()


def test_clean_refuses_a_split_that_leaves_a_label_out_of_train_or_val(workdir):
    _raw(workdir, {"text": ["good", "fine", "nice", "bad"], "label": [1, 1, 1, 0]})
    write_params(workdir, **{"split.val_fraction": 0.25})
    with pytest.raises(PipelineError, match=r"val_fraction=0.25: cannot split the 1 train review"):
        clean.main()
    assert not (workdir / "data/clean").exists()


def test_vocab_is_most_frequent_with_pad_unk_and_alphabetical_ties(workdir):
    (workdir / "data/clean").mkdir(parents=True)
    texts = ["b a c", "c b", "c", "z y x"]  # c:3 b:2 then a, x, y, z tie at 1
    pd.DataFrame({"text": texts, "label": [0, 1, 0, 1]}).to_parquet("data/clean/train.parquet")
    write_params(workdir, **{"vocab.size": 5})
    vocab.main()
    assert read_vocab("data/vocab.txt") == ["<pad>", "<unk>", "c", "b", "a"]
    pd.DataFrame({"text": texts[::-1], "label": [1, 0, 1, 0]}).to_parquet(
        "data/clean/train.parquet"
    )
    vocab.main()
    assert read_vocab("data/vocab.txt") == ["<pad>", "<unk>", "c", "b", "a"]


def test_encode_writes_byte_identical_arrays(workdir):
    (workdir / "data/clean").mkdir(parents=True)
    for split in ("train", "val", "test"):
        pd.DataFrame({"text": ["good film", "bad bad bad bad bad"], "label": [1, 0]}).to_parquet(
            f"data/clean/{split}.parquet"
        )
    (workdir / "data/vocab.txt").write_text("<pad>\n<unk>\ngood\nbad\n")
    write_params(workdir, **{"encode.max_len": 3})
    encode.main()
    records = open_encoded("data/encoded/val.npy", vocab_size=4, max_len=3)
    assert records["ids"].tolist() == [[2, 1, 0], [3, 3, 3]]
    assert records["length"].tolist() == [2, 3] and records["label"].tolist() == [1, 0]
    # Beside the arrays, how they were made: what train and model.pt take.
    assert read_encoding(ENCODING) == Encoding(["<pad>", "<unk>", "good", "bad"], 3, "tail")
    first = [(workdir / ENCODED / name).read_bytes() for name in ("test.npy", "encoding.json")]
    encode.main()
    assert [
        (workdir / ENCODED / name).read_bytes() for name in ("test.npy", "encoding.json")
    ] == first


# Bad input: each case ends in one PipelineError naming the culprit, or a reported warning.


def _aclimdb(workdir, archive):
    write_params(workdir, **{"download.source": "aclimdb", "download.archive": str(archive)})


def test_corrupt_and_truncated_archives_are_named(workdir):
    (workdir / "junk.tar.gz").write_bytes(b"\x1f\x8b this is not gzip data" * 10)
    _aclimdb(workdir, workdir / "junk.tar.gz")
    with pytest.raises(PipelineError, match=r"junk.tar.gz: not a readable tar archive"):
        download.main()
    whole = write_archive(workdir / "whole.tar.gz", per_label=40).read_bytes()
    (workdir / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    _aclimdb(workdir, workdir / "cut.tar.gz")
    with pytest.raises(PipelineError, match=r"cut.tar.gz: not a readable tar archive"):
        download.main()
    assert not (workdir / "data").exists()  # nothing written by a failed run


def test_archive_without_a_split_is_named(workdir):
    import tarfile

    archive = write_archive(workdir / "a.tar.gz")
    with tarfile.open(archive) as src, tarfile.open(workdir / "no_test.tar.gz", "w:gz") as dst:
        for member in src:
            if "/test/" not in member.name:
                dst.addfile(member, src.extractfile(member))
    _aclimdb(workdir, workdir / "no_test.tar.gz")
    with pytest.raises(
        PipelineError, match=r"no_test.tar.gz: no reviews under test/pos or test/neg"
    ):
        download.main()
    (workdir / "empty_dir").mkdir()
    _aclimdb(workdir, workdir / "empty_dir")
    with pytest.raises(PipelineError, match=r"empty_dir: no reviews under train/pos"):
        download.main()
    _aclimdb(workdir, workdir / "missing.tar.gz")
    with pytest.raises(PipelineError, match=r"download.archive: \S*missing.tar.gz does not exist"):
        download.main()


def test_empty_and_non_utf8_reviews_are_reported(workdir, capsys):
    extra = {
        "aclImdb/train/pos/900_8.txt": b"   \n",
        "aclImdb/train/neg/901_1.txt": b"caf\xe9 was awful \xff",
    }
    _aclimdb(workdir, write_archive(workdir / "a.tar.gz", per_label=3, extra=extra))
    download.main()
    out = capsys.readouterr().out
    assert "left out 1 empty review file(s), e.g. aclImdb/train/pos/900_8.txt" in out
    assert "1 review(s) were not valid UTF-8" in out and "aclImdb/train/neg/901_1.txt" in out
    train = pd.read_parquet("data/raw/train.parquet")
    assert len(train) == 7 and "caf\ufffd was awful \ufffd" in train.text.tolist()


def test_unreachable_modelscope_says_how_to_run_offline(workdir, fake_hub, monkeypatch):
    from modelscope.msdatasets import MsDataset

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(MsDataset, "load", offline)
    write_params(workdir, **{"download.source": "modelscope", "download.dataset": "imdb"})
    with pytest.raises(PipelineError) as error:
        download.main()
    message = str(error.value)
    assert "could not reach the ModelScope hub to load 'imdb' (no route to host)" in message
    assert "`uv run dvc exp run -S download.source=aclimdb -S download.archive=" in message


def test_damaged_artifacts_name_the_stage_to_rerun(workdir):
    _aclimdb(workdir, write_archive(workdir / "a.tar.gz", per_label=10))
    download.main()
    write_params(workdir, **{"vocab.size": 20, "encode.max_len": 8})
    clean.main()
    vocab.main()
    encode.main()
    raw = workdir / "data/raw/train.parquet"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(
        PipelineError, match=r"train.parquet: not a readable parquet.*dvc repro --force download"
    ):
        clean.main()
    pd.DataFrame({"txt": ["x"], "label": [1]}).to_parquet("data/clean/train.parquet")
    with pytest.raises(PipelineError, match=r"column 'text' is missing.*dvc repro --force clean"):
        vocab.main()
    npy = workdir / "data/encoded/val.npy"
    npy.write_bytes(npy.read_bytes()[:-10])
    with pytest.raises(
        PipelineError, match=r"val.npy: not a readable .npy file.*dvc repro --force encode"
    ):
        open_encoded(npy, vocab_size=20, max_len=8)
    with pytest.raises(PipelineError, match=r"out of range for its encoding.*--force encode"):
        open_encoded(workdir / "data/encoded/test.npy", vocab_size=3, max_len=8)
    with pytest.raises(PipelineError, match=r"out of range for its encoding.*--force encode"):
        open_encoded(workdir / "data/encoded/test.npy", vocab_size=20, max_len=9)
    (workdir / ENCODING).write_text('{"vocab": ["<pad>", "<unk>", "a"], "max_len": 0}')
    with pytest.raises(PipelineError, match=r"encoding.json: not an encoding.*--force encode"):
        read_encoding(ENCODING)
    (workdir / "data/vocab.txt").write_text("<pad>\n<pad>\n")
    with pytest.raises(PipelineError, match=r"vocab.txt: expected one distinct word per line"):
        read_vocab("data/vocab.txt")
