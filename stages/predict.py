"""Predict sentiment with the trained model: `python -m stages.predict "Great film!"`.

Texts come as arguments or from --file (.txt, one review per line; .csv or .parquet with a `text`
column); a CSV of text, label, probability (of positive) goes to --output or stdout. Cleaning and
encoding are the pipeline's own (zimdb.text, with params.yaml's encode section), so a review
scores exactly as evaluate scored it.
"""

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from zimdb import params, text
from zimdb.artifacts import read_vocab
from zimdb.batching import Encoded, logits
from zimdb.device import resolve
from zimdb.errors import PipelineError, run
from zimdb.model import load

VOCAB, MODEL = Path("data/vocab.txt"), Path("data/model.pt")
CHUNK = 8192  # reviews encoded at a time: bounded memory for any file size


def read_texts(path: Path) -> pd.Series:
    if not path.exists():
        raise PipelineError(f"--file {path} does not exist")
    if path.suffix == ".txt":
        return pd.Series(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), dtype=object
        )
    if path.suffix not in (".csv", ".parquet"):
        raise PipelineError(f"--file {path}: expected a .txt, .csv or .parquet file")
    df = (
        pd.read_csv(path, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    )
    if "text" not in df.columns:
        raise PipelineError(
            f"--file {path}: no `text` column (found {', '.join(map(str, df.columns))})"
        )
    return df["text"].astype(str)


def probabilities(
    texts: pd.Series, model, vocab: list[str], encode_params, batch_size: int
) -> np.ndarray:
    """P(positive) for each raw text, cleaned and encoded exactly as the pipeline does."""
    device = next(model.parameters()).device
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    )
    out = np.empty(len(texts), dtype=np.float32)
    with tqdm(
        total=len(texts), unit=" reviews", disable=len(texts) <= CHUNK, file=sys.stderr
    ) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = text.clean(texts.iloc[start : start + CHUNK].reset_index(drop=True))
            ids, lengths = text.encode(chunk, vocab, encode_params.max_len, encode_params.truncate)
            data = Encoded(
                ids=torch.from_numpy(ids).to(device),
                lengths=torch.from_numpy(lengths).to(device),
                labels=torch.zeros(len(ids), device=device),
                lengths_np=lengths,
            )
            out[start : start + len(ids)] = torch.sigmoid(
                logits(model, data, batch_size, autocast)
            ).cpu()
            bar.update(len(ids))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="reviews to score")
    parser.add_argument("--file", type=Path, help=".txt (one review per line), .csv or .parquet")
    parser.add_argument("--output", type=Path, help="CSV to write (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if bool(args.texts) == bool(args.file):
        parser.error("give review texts as arguments or --file, not both and not neither")

    texts = read_texts(args.file) if args.file else pd.Series(args.texts, dtype=object)
    model = load(MODEL, resolve(args.device, "--device"))
    prob = probabilities(texts, model, read_vocab(VOCAB), params.load("encode"), args.batch_size)
    result = pd.DataFrame(
        {"text": texts, "label": np.where(prob > 0.5, "positive", "negative"), "probability": prob}
    )
    if args.output:
        result.to_csv(args.output, index=False, float_format="%.6f")
        print(f"wrote {len(result)} predictions to {args.output}", file=sys.stderr)
    else:
        result.to_csv(sys.stdout, index=False, float_format="%.6f")


if __name__ == "__main__":
    run(main)
