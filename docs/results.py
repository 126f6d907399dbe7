"""The README's results table, generated from the committed record (dvclive/ of the reference run),
so that it cannot drift from it.

    uv run python -m docs.results            # print the table
    uv run python -m docs.results --write    # and put it in README.md, between its markers
"""

import argparse
import json
import re
from pathlib import Path

from zimdb.errors import PipelineError, run

ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "dvclive"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results: [^\n]*-->\n).*?(<!-- /results -->)", re.S)


def read(stage: str, name: str = "metrics.json") -> dict | list:
    path = LIVE / stage / name
    if not path.exists():
        raise PipelineError(f"{path.relative_to(ROOT)} not found: run the pipeline first")
    return json.loads(path.read_text())


def by_length(stage: str) -> dict[str, float]:
    """The stage's accuracy by length (zimdb.scoring.by_length), from its chart's file."""
    return {row["metric"]: row["accuracy"] for row in read(stage, "plots/custom/by_length.json")}


def table() -> str:
    lstm, baseline, train = read("evaluate"), read("baseline"), read("train")
    rows = [
        (
            "LSTM",
            lstm | by_length("evaluate"),
            f"{train['val_acc']:.4f} (epoch {train['best_epoch']} of {train['step']})",
        ),
        (
            "baseline: TF-IDF + logistic regression",
            baseline | by_length("baseline"),
            f"{baseline['val_acc']:.4f}",
        ),
    ]
    lines = [
        "| model | test accuracy | ROC AUC | F1 | last 10 words | first 10 words | best val accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, val in rows:
        lines.append(
            f"| {name} | **{m['accuracy']:.4f}** | {m['roc_auc']:.4f} | {m['f1']:.4f} | "
            f"{m['last_10']:.3f} | {m['first_10']:.3f} | {val} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    generated = table()
    print(generated, end="")
    if args.write:
        text = README.read_text()
        if not BLOCK.search(text):
            raise PipelineError("README.md has no <!-- results: ... --> block to fill")
        README.write_text(BLOCK.sub(lambda m: m[1] + generated + m[2], text))


if __name__ == "__main__":
    run(main)
