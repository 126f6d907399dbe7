"""Stage encode: token ids padded/truncated to encode.max_len, with each review's real length.

Writes data/encoded/{train,val,test}.npy, one structured array per split (ids, length, label),
and beside them data/encoded/encoding.json: the vocabulary and settings they were made with.
Each split is encoded and written a batch of reviews at a time.
"""

import numpy as np

from zimdb import params
from zimdb.data.artifacts import (
    EncodedWriter,
    atomic_path,
    count_rows,
    encoded_dtype,
    read_vocab,
    table_batches,
)
from zimdb.data.encoding import Encoding, write_encoding
from zimdb.data.text import UNK
from zimdb.errors import run
from zimdb.paths import CLEAN, ENCODED, ENCODING, VOCAB


def main() -> None:
    p = params.load("encode")
    encoding = Encoding(read_vocab(VOCAB), p.max_len, p.truncate)
    dtype = encoded_dtype(len(encoding.vocab), p.max_len)
    for split in ("train", "val", "test"):
        source = CLEAN / f"{split}.parquet"
        full = kept = unknown = 0
        with (
            atomic_path(ENCODED / f"{split}.npy") as tmp,
            EncodedWriter(tmp, count_rows(source, "clean"), dtype) as out,
        ):
            for batch in table_batches(source, "clean", {"text": "str", "label": "iu"}):
                ids, lengths, _ = encoding.encode(batch.text)
                records = np.empty(len(batch), dtype=dtype)
                records["ids"], records["length"], records["label"] = ids, lengths, batch.label
                out.write(records)
                full += int((lengths == p.max_len).sum())
                kept, unknown = kept + int(lengths.sum()), unknown + int((ids == UNK).sum())
        print(
            f"{split}: {out.written} reviews, {full / max(out.written, 1):.1%} filling max_len="
            f"{p.max_len}, {unknown / max(kept, 1):.1%} of kept tokens unknown"
        )
    write_encoding(encoding, ENCODING)


if __name__ == "__main__":
    run(main)
