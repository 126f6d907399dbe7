"""Stage vocab: the vocab.size most frequent words of the train split, PAD = 0 and UNK = 1 first.

Writes data/vocab.txt, one word per line; the line number is the token id. The train split is
counted a batch at a time; only the counts of its distinct words are held.
"""

import pyarrow as pa

from zimdb import params
from zimdb.data import text
from zimdb.data.artifacts import table_batches, write_vocab
from zimdb.errors import run
from zimdb.paths import CLEAN, VOCAB


def main() -> None:
    p = params.load("vocab")
    counts = text.WordCounts()
    for batch in table_batches(CLEAN / "train.parquet", "clean", {"text": "str"}):
        counts.add(batch.text)
    ranked = counts.table()
    # Ties are broken alphabetically, so the vocabulary never depends on row order.
    order = pa.compute.sort_indices(ranked, [("count", "descending"), ("word", "ascending")])
    keep = order[: p.size - len(text.SPECIALS)]
    words = text.SPECIALS + ranked.column("word").take(keep).to_pylist()
    write_vocab(words, VOCAB)
    total = pa.compute.sum(ranked.column("count")).as_py() or 0
    covered = pa.compute.sum(ranked.column("count").take(keep)).as_py() or 0
    print(
        f"{len(words)} tokens; {len(ranked)} distinct words in train, "
        f"{covered / max(total, 1):.1%} of uses covered"
    )


if __name__ == "__main__":
    run(main)
