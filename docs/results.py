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


def read(stage: str) -> dict:
    path = LIVE / stage / "metrics.json"
    if not path.exists():
        raise PipelineError(f"{path.relative_to(ROOT)} not found: run the pipeline first")
    return json.loads(path.read_text())


def table() -> str:
    lstm, baseline, train = read("evaluate"), read("baseline"), read("train")
    rows = [
        (
            "LSTM",
            lstm,
            f"{train['best/val_acc']:.4f} (epoch {train['best/epoch']} of {train['step']})",
        ),
        ("baseline: TF-IDF + logistic regression", baseline, f"{baseline['val']['accuracy']:.4f}"),
    ]
    lines = [
        "| model | test accuracy | ROC AUC | F1 | last 10 words | first 10 words | best val accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, val in rows:
        cuts = m["by_length"]
        lines.append(
            f"| {name} | **{m['accuracy']:.4f}** | {m['roc_auc']:.4f} | {m['f1']:.4f} | "
            f"{cuts['last_10']:.3f} | {cuts['first_10']:.3f} | {val} |"
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
