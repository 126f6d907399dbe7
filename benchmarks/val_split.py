"""How well val accuracy predicts test accuracy, for each split.group_by and several seeds:
`uv run python -m benchmarks.val_split [--archive PATH] [--seeds N]`.

A linear model (TF-IDF of the cleaned words, logistic regression) stands in for the LSTM: it
trains in seconds and, unlike the LSTM, has no epoch or seed of its own to pick, so the val - test
gap it prints is the split's alone. It reads the download stage's tables, cleaned by
`zimdb.data.text.clean` and split by the clean stage's own `held_out()`, as the pipeline does. Also
prints the same model on word bigrams, as a reference point for the test accuracy a linear model
reaches here.
"""

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from benchmarks.run import ARCHIVE, data_stages
from zimdb.data import text
from zimdb.data.split import held_out


def accuracies(train: pd.DataFrame, others: list[pd.DataFrame], ngrams: int = 1) -> list[float]:
    words = TfidfVectorizer(ngram_range=(1, ngrams), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=4, max_iter=2000).fit(words.fit_transform(train.text), train.label)
    return [model.score(words.transform(df.text), df.label) for df in others]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--seeds", type=int, default=6, help="split seeds 42, 43, ... per group_by")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_stages(args.archive, Path(tmp), ["download"])
        raw, test = (
            pd.read_parquet(Path(tmp) / f"data/raw/{s}.parquet") for s in ("train", "test")
        )
    raw["text"], test["text"] = text.clean(raw.text), text.clean(test.text)

    print(f"val_fraction {args.val_fraction}; TF-IDF words, logistic regression (C=4)")
    print(f"{'group_by':<9} {'seed':>4} {'val n':>6} {'val acc':>8} {'test acc':>9} {'gap':>7}")
    for group_by in ("review", "movie"):
        gaps = []
        for seed in range(42, 42 + args.seeds):
            to_val = held_out(raw, args.val_fraction, seed, group_by)
            train, val = raw[~to_val], raw[to_val]
            val_acc, test_acc = accuracies(train, [val, test])
            gaps.append(val_acc - test_acc)
            print(
                f"{group_by:<9} {seed:>4} {len(val):>6} {val_acc:>8.4f} {test_acc:>9.4f} "
                f"{val_acc - test_acc:>+7.4f}",
                flush=True,
            )
        print(f"{group_by:<9} mean val - test gap {sum(gaps) / len(gaps):+.4f}\n")

    to_val = held_out(raw, args.val_fraction, 42, "review")
    train, val = raw[~to_val], raw[to_val]
    val_acc, test_acc = accuracies(train, [val, test], ngrams=2)
    print(f"words and bigrams, seed 42, group_by review: val {val_acc:.4f}, test {test_acc:.4f}")


if __name__ == "__main__":
    main()
