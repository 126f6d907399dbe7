"""The stages stream: a stage's peak memory (VmHWM, read by its process as it exits) on 10 N
reviews stays within BOUND of its peak on N, N being one batch of rows (ROWS), so that the
larger corpus passes through in ten batches.

The bound: freed memory is kept for reuse by the allocators (Arrow's mimalloc, glibc's), whose
peak levels off after about ten batches. Measured on this corpus, on a 2-core AMD EPYC: the
stages grew by 31 (download) to 89 MB (encode) from N to 10 N, evaluate by 149 MB, 71 of them
its mapped test split's; the stages as they were, each holding its splits whole, by 204 (vocab)
to 1,081 MB (encode).

evaluate maps the encoded test split into memory, whose pages the kernel counts in VmHWM too:
its bound is BOUND plus the growth of that file. Training maps its splits the same way; its
anonymous memory at scale is measured by benchmarks/scale.py."""

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.scale import measure
from tests.conftest import ROOT, model_config
from tests.test_table_source import write
from zimdb.data.artifacts import ROWS
from zimdb.data.encoding import read_encoding
from zimdb.model.file import ModelFile
from zimdb.model.lstm import SentimentLSTM

N = ROWS
BOUND = 128 << 20
CAP = 8 << 30  # address space a stage may take here: the machine is never at risk


def reviews(n: int, seed: int) -> pd.DataFrame:
    """`n` reviews of 30 to 80 words from 5,000 made-up ones, labelled 1 and 2."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(5000)])
    lengths = rng.integers(30, 80, n)
    words = vocab[rng.zipf(1.3, lengths.sum()) % len(vocab)]
    texts = [" ".join(ws) for ws in np.split(words, np.cumsum(lengths)[:-1])]
    return pd.DataFrame({"text": texts, "label": rng.integers(1, 3, n)})


def project(folder, n: int, suffix: str) -> None:
    folder.mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        write(reviews(n, seed), folder / f"{split}{suffix}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"] |= {
        "source": "table",
        "train": f"train{suffix}",
        "test": f"test{suffix}",
        "labels": [1, 2],
    }
    # Two passes show what a later epoch's re-reading adds; ten (the default) only take longer.
    params["baseline"]["epochs"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def tiny_model(folder) -> None:
    """A model file for evaluate: small and untrained, the encoding of the folder's data."""
    encoding = read_encoding(folder / "data/encoded/encoding.json")
    config = model_config(len(encoding.vocab), embedding_dim=8, hidden_dim=8)
    ModelFile(SentimentLSTM(config), encoding, "fp32").save(folder / "data/model.pt")


def growth(tmp_path, stages: list[str], suffix: str = ".parquet") -> dict[str, int]:
    """Each stage's peak on 10 N reviews less its peak on N."""
    peaks = {}
    for n in (N, 10 * N):
        folder = tmp_path / f"{n}"
        project(folder, n, suffix)
        for stage in stages:
            if stage == "evaluate":
                tiny_model(folder)
            peaks.setdefault(stage, []).append(measure(f"stages.{stage}", folder, cap=CAP).peak)
    return {stage: large - small for stage, (small, large) in peaks.items()}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".tsv.gz", "parts"])
def test_download_streams_every_format(tmp_path, suffix):
    """CSV, JSON Lines, a compressed TSV and a folder of Parquet parts (Parquet files: below)."""
    grown = growth(tmp_path, ["download"], suffix)
    assert grown["download"] < BOUND, f"{grown['download'] / 2**20:.0f} MiB"


def test_every_stage_streams_but_training(tmp_path):
    stages = ["download", "clean", "vocab", "encode", "evaluate", "baseline"]
    grown = growth(tmp_path, stages)
    mapped = sum(
        (tmp_path / f"{n}" / "data/encoded/test.npy").stat().st_size * sign
        for n, sign in ((N, -1), (10 * N, 1))
    )
    for stage, grew in grown.items():
        bound = BOUND + (mapped if stage == "evaluate" else 0)
        assert grew < bound, f"{stage}: {grew / 2**20:.0f} MiB more, bound {bound / 2**20:.0f}"
