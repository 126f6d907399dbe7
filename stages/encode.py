"""Stage encode: token ids padded/truncated to encode.max_len, with each review's real length.

Writes data/encoded/{train,val,test}.npy: one structured array per split (ids, length, label).
"""

import numpy as np

from zimdb import params
from zimdb.data import text
from zimdb.data.artifacts import encoded_dtype, read_table, read_vocab, write_encoded
from zimdb.errors import run
from zimdb.paths import CLEAN, ENCODED, VOCAB


def main() -> None:
    p = params.load("encode")
    vocab = read_vocab(VOCAB)
    for split in ("train", "val", "test"):
        df = read_table(CLEAN / f"{split}.parquet", "clean", {"text": "str", "label": "iu"})
        ids, lengths = text.encode(df.text, vocab, p.max_len, p.truncate)
        records = np.empty(len(df), dtype=encoded_dtype(len(vocab), p.max_len))
        records["ids"], records["length"], records["label"] = ids, lengths, df.label
        write_encoded(records, ENCODED / f"{split}.npy")
        unk = (ids == text.UNK).sum() / max(lengths.sum(), 1)
        print(
            f"{split}: {len(df)} reviews, {(lengths == p.max_len).mean():.1%} filling max_len="
            f"{p.max_len}, {unk:.1%} of kept tokens unknown"
        )


if __name__ == "__main__":
    run(main)
