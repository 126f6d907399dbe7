"""Stage encode: token ids padded/truncated to encode.max_len, with each review's real length.

Writes data/encoded/{train,val,test}.npy, one structured array per split (ids, length, label),
and beside them data/encoded/encoding.json: the vocabulary and settings they were made with.
"""

import numpy as np

from zimdb import params
from zimdb.data.artifacts import encoded_dtype, read_table, read_vocab, write_encoded
from zimdb.data.encoding import Encoding, write_encoding
from zimdb.data.text import UNK
from zimdb.errors import run
from zimdb.paths import CLEAN, ENCODED, ENCODING, VOCAB


def main() -> None:
    p = params.load("encode")
    encoding = Encoding(read_vocab(VOCAB), p.max_len, p.truncate)
    for split in ("train", "val", "test"):
        df = read_table(CLEAN / f"{split}.parquet", "clean", {"text": "str", "label": "iu"})
        ids, lengths, _ = encoding.encode(df.text)
        records = np.empty(len(df), dtype=encoded_dtype(len(encoding.vocab), p.max_len))
        records["ids"], records["length"], records["label"] = ids, lengths, df.label
        write_encoded(records, ENCODED / f"{split}.npy")
        print(
            f"{split}: {len(df)} reviews, {(lengths == p.max_len).mean():.1%} filling max_len="
            f"{p.max_len}, {(ids == UNK).sum() / lengths.sum():.1%} of kept tokens unknown"
        )
    write_encoding(encoding, ENCODING)


if __name__ == "__main__":
    run(main)
