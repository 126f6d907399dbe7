import re
import threading

import numpy as np
import pandas as pd
import pyarrow as pa

from zimdb.data import text
from zimdb.data.encoding import Encoding


def test_clean_strips_tags_keeps_letters_and_apostrophes_lowercases():
    raw = pd.Series(
        ["This<br /><br />movie's GREAT!!! 10/10", "<i>Bad</i>-ish, isn't it?", "", "<p></p> 123"]
    )
    assert text.clean(raw).tolist() == ["this movie's great", "bad ish isn't it", "", ""]


def test_clean_drops_non_ascii_letters_as_the_original_did():
    assert text.clean(pd.Series(["café naïve 東京"])).tolist() == ["caf na ve"]


def test_clean_matches_the_original_python_rules_on_many_reviews():
    rng = np.random.default_rng(0)
    pieces = ["Good", "<br />", "isn't", " 10/10 ", "café", "\t", "<a href='x'>", "!!", "東京"]
    raw = pd.Series(["".join(rng.choice(pieces, size=rng.integers(0, 12))) for _ in range(301)])

    def original(review: str) -> str:
        review = re.sub(r"<[^>]*>", " ", review)
        return re.sub(r"[^a-zA-Z']+", " ", review).strip().lower()

    assert text.clean(raw).tolist() == [original(r) for r in raw]  # many chunks, order kept


def test_split_words_gives_no_word_for_an_empty_review():
    words, counts = text.split_words(pd.Series(["a b", "", "c"]))
    assert words.to_pylist() == ["a", "b", "c"] and counts.tolist() == [2, 0, 1]


def table_dict(counts: text.WordCounts) -> dict[str, int]:
    counted = counts.table()
    return dict(zip(counted["word"].to_pylist(), counted["count"].to_pylist(), strict=True))


def test_word_counts():
    counts = text.WordCounts().add(pd.Series(["a b a", "", "b a"]))
    assert table_dict(counts) == {"a": 3, "b": 2}


def test_word_counts_over_batches_sum_each_word_once():
    batches = [pd.Series(["a b a", "c"]), pd.Series([""]), pd.Series(["b a", "d c"])]
    counts = text.WordCounts()
    counts.merged = 1  # sum the parts after almost every batch, as a large split does
    for batch in batches:
        counts.add(batch)
    assert table_dict(counts) == {"a": 3, "b": 2, "c": 2, "d": 1}
    assert table_dict(text.WordCounts()) == {}


VOCAB = ["<pad>", "<unk>", "good", "bad", "film"]


def test_encode_pads_and_maps_unknown_words():
    reviews = pd.Series(["good film", "bad zzz", ""])
    ids, lengths, first = Encoding(VOCAB, 4, "head").encode(reviews)
    assert ids.tolist() == [[2, 4, 0, 0], [3, 1, 0, 0], [0, 0, 0, 0]]
    assert lengths.tolist() == [2, 2, 1]  # an empty review: one PAD, a last token to read at
    assert first.tolist() == [0, 0, 0]


def test_encode_truncates_head_or_tail_and_says_where_the_words_kept_start():
    review = pd.Series(["good bad film good bad", "film good"])
    head, n, head_first = Encoding(VOCAB, 3, "head").encode(review)
    tail, _, tail_first = Encoding(VOCAB, 3, "tail").encode(review)
    assert head.tolist() == [[2, 3, 4], [4, 2, 0]] and n.tolist() == [3, 2]
    assert tail.tolist() == [[4, 2, 3], [4, 2, 0]]
    assert head_first.tolist() == [0, 0] and tail_first.tolist() == [2, 0]


def test_encode_of_nothing():
    ids, lengths, first = Encoding(VOCAB, 3, "head").encode(pd.Series([], dtype=object))
    assert ids.shape == (0, 3) and lengths.shape == first.shape == (0,)
    assert ids.dtype == np.int64


def test_clean_reuses_one_pool_and_keeps_a_few_reviews_on_the_calling_thread(monkeypatch):
    """The service cleans every batch it scores: no pool built per call, none for a few."""
    threads = []

    def chunk(texts):
        threads.append(threading.current_thread())
        return clean_chunk(texts)

    clean_chunk = text._clean_chunk
    monkeypatch.setattr(text, "_clean_chunk", chunk)
    many = pd.Series(["Good <br />film"] * 64 * pa.cpu_count())
    for _ in range(3):
        assert text.clean(many).tolist() == ["good film"] * len(many)
    assert len(set(threads)) <= pa.cpu_count()
    threads.clear()
    assert text.clean(pd.Series(["Fine"])).tolist() == ["fine"]
    assert threads == [threading.current_thread()]


def test_clean_takes_lone_surrogates_as_a_utf8_decoder_takes_bad_bytes():
    """No UTF-8 encoder takes "\ud800", which JSON allows: each is read as U+FFFD, a non-letter."""
    raw = ["Great\ud800film", "\udcff", "ok \ud83d\ude00 <b>\udfff</b>"]
    raw = pd.Series(raw, dtype=object)  # pandas' own str dtype is Arrow's: it refuses them too
    assert text.clean(raw).tolist() == ["great film", "", "ok"]
