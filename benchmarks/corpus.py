"""k× IMDB corpora for the scale benchmark, made of the archive's real reviews: each new review a
fresh mix of sentences from reviews of one label, as many as a review drawn at random from that
label has, so lengths stay like IMDB's. A remix can only reuse IMDB's words, so new words are
mixed in as a larger corpus would bring them: by Heaps' law the distinct words of t tokens grow
as V0 (t / T0)^BETA, V0 and T0 being the archive split's own.

Written as the table source reads them: Parquet files with a `text` and a `label` column,
labelled 1 (negative) and 2 (positive) as Amazon's and Yelp's polarity sets are; rewritten in
any other format the table source reads by as_format().
"""

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as csv
import pyarrow.parquet as pq
from tqdm import tqdm

from zimdb.data import aclimdb, text

LABELS = (1, 2)  # the corpus's negative and positive: download.labels
BETA = 0.5  # Heaps' exponent: English text is usually put between 0.4 and 0.6
CHUNK = 50_000  # reviews made and written at a time
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Remix:
    """One archive split's sentences by label, and the words and tokens a remix starts from."""

    def __init__(self, reviews: pd.DataFrame):
        self.pools, self.template_sizes, self.words_per = {}, {}, {}
        for label in (0, 1):
            split = [SENTENCE_END.split(t) for t in reviews.text[reviews.label == label]]
            pool = np.array([s for sentences in split for s in sentences], dtype=object)
            self.pools[label] = pool
            self.template_sizes[label] = np.array([len(s) for s in split])
            self.words_per[label] = np.array([len(s.split()) for s in pool])
        counts = text.WordCounts().add(text.clean(reviews.text)).table()["count"]
        self.distinct, self.tokens = len(counts), pa.compute.sum(counts).as_py()

    def new_words(self, tokens: int) -> int:
        """How many new words a corpus has by its `tokens`th token (none within the archive's
        own size)."""
        return max(0, int(self.distinct * ((tokens / self.tokens) ** BETA - 1)))

    def reviews(self, n: int, seed: int) -> Iterator[pd.DataFrame]:
        """`n` remixed reviews, half of each label in a random order, in chunks."""
        rng = np.random.default_rng(seed)
        seen: set[int] = set()
        tokens = introduced = 0
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            labels = rng.permutation(np.arange(start, start + size) % 2)
            texts = []
            for label in labels:
                pool, sizes, words = (
                    self.pools[label],
                    self.template_sizes[label],
                    self.words_per[label],
                )
                while True:  # a repeat of an earlier review is drawn again
                    picked = rng.integers(len(pool), size=sizes[rng.integers(len(sizes))])
                    sentences = list(pool[picked])
                    review = " ".join(sentences)
                    if hash(review) not in seen:
                        break
                seen.add(hash(review))
                tokens += int(words[picked].sum())
                due = self.new_words(tokens) - introduced
                if due:
                    coined = " ".join(coin(introduced + i) for i in range(due))
                    sentences.insert(int(rng.integers(len(sentences) + 1)), coined)
                    review, introduced = " ".join(sentences), introduced + due
                texts.append(review)
            yield pd.DataFrame({"text": texts, "label": np.array(LABELS)[labels]})


def coin(number: int) -> str:
    """The `number`th new word: letters only (cleaning keeps them), never an English word."""
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters += chr(ord("a") + digit)
        if not number:
            return "zq" + letters


def write(archive: Path, k: float, folder: Path, seed: int = 0) -> dict[str, Path]:
    """train.parquet and test.parquet of k× the archive's reviews each, in `folder`."""
    frames = aclimdb.load(str(archive))
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for offset, (split, reviews) in enumerate(frames.items()):
        reviews = reviews.assign(label=reviews.label.map({"neg": 0, "pos": 1}))
        remix, n = Remix(reviews), round(k * len(reviews))
        path = folder / f"{split}.parquet"
        schema = pa.schema([("text", pa.large_string()), ("label", pa.int64())])
        with pq.ParquetWriter(path, schema) as out, tqdm(total=n, desc=f"{k:g}x {split}") as bar:
            for chunk in remix.reviews(n, seed + offset):
                out.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
                bar.update(len(chunk))
        files[split] = path
    return files


FORMATS = ("csv", "tsv", "jsonl", "csv.gz", "tsv.gz", "jsonl.gz", "parts")
PART = 500_000  # rows of each Parquet part of a folder


def as_format(files: dict[str, Path], kind: str, folder: Path) -> dict[str, Path]:
    """The corpus `files` (Parquet) rewritten as `kind`, one of FORMATS ("parts": a folder of
    Parquet parts of PART rows), in `folder`, a batch at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, source in files.items():
        reader = pq.ParquetFile(source)
        batches = reader.iter_batches(batch_size=CHUNK)
        path = out[split] = folder / (f"{split}.{kind}" if kind != "parts" else split)
        if kind == "parts":
            path.mkdir()
            pending, number = [], 0
            for batch in itertools.chain(batches, [None]):  # None: the last part's end
                if batch is not None:
                    pending.append(batch)
                if pending and (batch is None or sum(map(len, pending)) >= PART):
                    part = path / f"part-{number:05d}.snappy.parquet"
                    pq.write_table(pa.Table.from_batches(pending), part)
                    pending, number = [], number + 1
            continue
        with pa.output_stream(str(path)) as stream:  # gzip-compressed by the name
            if kind.startswith("jsonl"):
                for batch in batches:
                    lines = batch.to_pandas().to_json(orient="records", lines=True)
                    stream.write(lines.encode())
            else:
                options = csv.WriteOptions(delimiter="\t" if kind.startswith("tsv") else ",")
                with csv.CSVWriter(stream, reader.schema_arrow, write_options=options) as writer:
                    for batch in batches:
                        writer.write_batch(batch)
    return out
