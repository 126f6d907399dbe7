"""Every file the stages exchange, named once; dvc.yaml's deps and outs are these paths."""

from pathlib import Path

RAW = Path("data/raw")  # download: {train,test}.parquet
CLEAN = Path("data/clean")  # clean: {train,val,test}.parquet
VOCAB = Path("data/vocab.txt")
ENCODED = Path("data/encoded")  # encode: {train,val,test}.npy
ENCODING = ENCODED / "encoding.json"  # encode: the vocabulary and settings of those arrays
MODEL = Path("data/model.pt")
TRAIN_STATE = Path("data/train_state.pt")  # train's resume file, not a DVC output
TRAIN_LIVE = Path("dvclive/train")
PREDICTIONS = Path("data/predictions/test.parquet")
EVALUATE_LIVE = Path("dvclive/evaluate")
BASELINE = Path("data/baseline.skops")
BASELINE_LIVE = Path("dvclive/baseline")
