"""Stage vocab: the vocab.size most frequent words of the train split, PAD = 0 and UNK = 1 first.

Writes data/vocab.txt, one word per line; the line number is the token id.
"""

from zimdb import params
from zimdb.data import text
from zimdb.data.artifacts import read_table, write_vocab
from zimdb.errors import run
from zimdb.paths import CLEAN, VOCAB


def main() -> None:
    p = params.load("vocab")
    train = read_table(CLEAN / "train.parquet", "clean", {"text": "str"})
    counts = text.word_counts(train.text)
    # Ties are broken alphabetically, so the vocabulary never depends on row order.
    ranked = counts.rename("count").rename_axis("word").reset_index()
    ranked = ranked.sort_values(["count", "word"], ascending=[False, True], kind="stable")
    words = text.SPECIALS + ranked.word.head(p.size - len(text.SPECIALS)).tolist()
    write_vocab(words, VOCAB)
    covered = ranked["count"].head(len(words) - len(text.SPECIALS)).sum() / max(
        ranked["count"].sum(), 1
    )
    print(
        f"{len(words)} tokens; {len(ranked)} distinct words in train, {covered:.1%} of uses covered"
    )


if __name__ == "__main__":
    run(main)
