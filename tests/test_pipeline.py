"""The whole pipeline through the real `dvc` CLI, in a temporary git + DVC copy of the project,
and the predict command on the model it trains."""

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LSTM_CUSTOM, PLOTS, SMALL, TRAIN_PLOTS, dvc, run, write_params
from tests.test_table_source import REVIEWS, write
from zimdb import errors
from zimdb import predict as predict_command


def test_dvc_repro_builds_model_metrics_and_plots(built):
    root, first = built
    for stage in ("download", "clean", "vocab", "encode", "train", "evaluate", "baseline"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (root / "data/model.pt").stat().st_size > 0
    # `dvc metrics show` lists the headline alone: by-length accuracy is in its chart's file.
    test_metrics = {"loss", "accuracy", "f1", "roc_auc"}
    scores = json.loads((root / "dvclive/evaluate/metrics.json").read_text())
    assert set(scores) == test_metrics
    assert 0 <= scores["accuracy"] <= 1
    # The baseline's metrics have the LSTM's names, and its val accuracy besides.
    baseline = json.loads((root / "dvclive/baseline/metrics.json").read_text())
    assert set(baseline) == test_metrics | {"val_acc"}
    cuts = {f"{end}_{k}" for end in ("first", "last") for k in (10, 20, 40)}
    for stage in ("evaluate", "baseline"):
        rows = json.loads((root / f"dvclive/{stage}/plots/custom/by_length.json").read_text())
        assert cuts <= {row["metric"] for row in rows}
        assert all(0 <= row["accuracy"] <= 1 for row in rows)
    summary = json.loads((root / "dvclive/train/metrics.json").read_text())
    # dvclive's step is the epoch number: SMALL's 2 epochs are steps 1 and 2.
    assert SMALL["train.epochs"] == 2
    assert set(summary) == {"step", "best_epoch", "val_acc", "samples_per_s"}
    assert summary["step"] == 2 and summary["best_epoch"] in (1, 2)
    epochs = {
        name: file_rows(root / TRAIN_PLOTS / f"{name}.tsv")
        for name in ("samples_per_s", "epoch_time_s")
    }
    seen = sum(
        float(s["samples_per_s"]) * float(t["epoch_time_s"])
        for s, t in zip(*epochs.values(), strict=True)
    )
    assert summary["samples_per_s"] == pytest.approx(
        seen / sum(float(t["epoch_time_s"]) for t in epochs["epoch_time_s"])
    )
    with open(root / TRAIN_PLOTS / "val/acc.tsv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f, delimiter="\t")] == ["1", "2"]

    shown = json.dumps(json.loads(dvc("metrics", "show", "--json", cwd=root).stdout))
    assert "dvclive/evaluate/metrics.json" in shown and "dvclive/baseline/metrics.json" in shown


def file_rows(path) -> list[dict]:
    """The records of a dvclive plot file: a .tsv's rows (strings, as DVC reads them), or the
    list in a .json (under its one key, as in {"roc": [...]})."""
    if path.suffix == ".tsv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    data = json.loads(path.read_text())
    return next(iter(data.values())) if isinstance(data, dict) else data


def mark_type(layer: dict) -> str:
    mark = layer["mark"]  # "rect", or {"type": "text", ...}
    return mark if isinstance(mark, str) else mark["type"]


def canonical(rows) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def test_plots_show_draws_each_chart_once_from_its_files(built):
    root, _ = built
    shown = json.loads(dvc("plots", "show", "--json", cwd=root).stdout)
    assert "errors" not in shown
    assert list(shown["data"]) == list(PLOTS)  # these charts, in this order, and no other
    for plot_id, (title, x, y, files) in PLOTS.items():
        (chart,) = shown["data"][plot_id]  # one chart, not one per file
        spec = chart["content"]
        encoding = spec["encoding"] if "encoding" in spec else spec["spec"]["encoding"]
        assert chart["revisions"] == ["workspace"], plot_id
        got = spec["title"]["text"], encoding["x"]["field"], encoding["y"]["field"]
        assert got == (title, x, y), plot_id
        # What it draws is exactly the records of its files. Charts of several files tell them
        # apart by `filename` (DVC drops the prefix they share): each group is its file's rows.
        drawn = spec["data"]["values"]
        assert {row["rev"] for row in drawn} == {"workspace"}
        by_file: dict[str, list] = {}
        for row in drawn:
            name = row.get("filename") if len(files) > 1 else files[0]
            rest = {k: v for k, v in row.items() if k not in ("rev", "filename", "field")}
            by_file.setdefault(name, []).append(rest)
        assert len(by_file) == len(files), plot_id
        for name, rows in by_file.items():
            (path,) = [f for f in files if f == name or f.endswith("/" + name)]
            assert canonical(rows) == canonical(file_rows(root / path)), (plot_id, path)

    for plot_id in ("Accuracy", "Loss"):  # epochs on the x axis, whole numbers only
        spec = shown["data"][plot_id][0]["content"]
        assert spec["encoding"]["x"]["title"] == "epoch"
        assert spec["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
        assert {row["step"] for row in spec["data"]["values"]} == {"1", "2"}
    # The confusion matrix writes its counts in the cells (no checkbox), classes by name.
    matrix = shown["data"]["Confusion matrix"][0]["content"]["spec"]
    (text,) = [layer for layer in matrix["layer"] if mark_type(layer) == "text"]
    assert text["encoding"]["text"] == {"field": "label", "type": "nominal"}
    (label,) = [t["calculate"] for t in matrix["transform"] if t.get("as") == "label"]
    assert label.startswith("format(datum.count, 'd')")
    # Its file holds the four counts, which add up to the test split.
    cells = file_rows(root / LSTM_CUSTOM / "confusion_matrix.json")
    classes = ["negative", "positive"]
    assert [(c["actual"], c["predicted"]) for c in cells] == [
        (a, p) for a in classes for p in classes
    ]
    predictions = pd.read_parquet(root / "data/predictions/test.parquet")
    assert sum(c["reviews"] for c in cells) == len(predictions)
    assert [c["reviews"] for c in cells] == [
        int(((predictions.label == a) & (predictions.prediction == p)).sum())
        for a in range(2)
        for p in range(2)
    ]


class Resources(HTMLParser):
    """The <script> elements of a page (inline code, or src) and every src/href it names."""

    def __init__(self):
        super().__init__()
        self.scripts, self.links, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[a] for a in ("src", "href") if attrs.get(a)]
        if tag == "script":
            self.scripts.append({"src": attrs.get("src"), "code": ""})
            self._in_script = True

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1]["code"] += data


def test_plots_page_needs_no_network(built, tmp_path):
    root, _ = built
    # Written outside the project, as `--out` allows: the page must not depend on where it is.
    out = tmp_path / "shown"
    dvc("plots", "show", "--out", str(out), cwd=root)
    html = (out / "index.html").read_text()
    page = Resources()
    page.feed(html)
    assert [s["src"] for s in page.scripts if s["src"]] == []  # every script inline
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))]
    code = "".join(s["code"] for s in page.scripts)
    for library in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        vendored = (root / "plots/vendor" / library).read_text().splitlines()[0]
        assert vendored in code, library
    assert html.count("vegaEmbed('#") == len(PLOTS)
    for title, *_ in PLOTS.values():
        assert title in html


def test_second_repro_runs_nothing(built):
    root, _ = built
    second = dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in dvc("status", cwd=root).stdout


def predict(root, *args, check=True) -> subprocess.CompletedProcess:
    """`python -m zimdb.predict ARGS` in `root`, run in this process: the same main() and the
    same error handling, without a second or more of imports per call."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            errors.run(lambda: predict_command.main(list(args)))
        except SystemExit as e:
            code = e.code
    if check and code != 0:
        raise AssertionError(f"predict {args} failed:\n{err.getvalue()}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_predict_equals_what_evaluate_computed(built):
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    evaluated = pd.read_parquet(root / "data/predictions/test.parquet")
    rows = [0, 7, len(raw) // 2 + 1, len(raw) - 1]
    raw.iloc[rows][["text"]].to_parquet(root / "some.parquet")
    predict(root, "--file", "some.parquet", "--output", "out.csv")
    out = pd.read_csv(root / "out.csv")
    assert out.text.tolist() == raw.text.iloc[rows].tolist()
    np.testing.assert_allclose(out.probability, evaluated.probability.iloc[rows], atol=1e-6)
    assert (out.label == np.where(out.probability > 0.5, "positive", "negative")).all()


@pytest.mark.parametrize("damage", ["label", "row"])
def test_evaluate_refuses_clean_and_encoded_tests_of_other_reviews(built, tmp_path, damage):
    root, _ = built
    copy = tmp_path / "project"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".dvc", ".git"))
    clean = copy / "data/clean/test.parquet"
    table = pd.read_parquet(clean)
    n = len(table)
    if damage == "label":
        table.loc[0, "label"] = 1 - table.loc[0, "label"]
        differ = f"labels differ in 1 of {n} rows"
    else:
        table = table.iloc[1:]
        differ = f"{n - 1} and {n} rows"
    table.to_parquet(clean)
    metrics = (copy / "dvclive/evaluate/metrics.json").read_bytes()
    result = run([sys.executable, "-m", "stages.evaluate"], copy, check=False)
    assert result.returncode == 2
    # Where the CPU has no bf16, the bf16 model's scoring note comes first, on a line of its own.
    errors = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert errors == [
        "error: data/clean/test.parquet and data/encoded/test.npy hold different reviews "
        f"({differ}); rerun `uv run dvc repro encode`"
    ]
    assert (copy / "dvclive/evaluate/metrics.json").read_bytes() == metrics


def test_predict_arguments_and_txt_file(built):
    root, _ = built
    # Once as the command users type; the other tests call the same main() in-process.
    args = run(
        [
            sys.executable,
            "-m",
            "zimdb.predict",
            "A wonderful, moving film.",
            "Dull and far too long.",
        ],
        root,
    )
    table = pd.read_csv(pd.io.common.StringIO(args.stdout))
    assert table.columns.tolist() == ["text", "label", "probability"] and len(table) == 2
    (root / "reviews.txt").write_text("A wonderful, moving film.\nDull and far too long.\n")
    from_file = pd.read_csv(pd.io.common.StringIO(predict(root, "--file", "reviews.txt").stdout))
    pd.testing.assert_frame_equal(from_file, table)


def test_predict_txt_reviews_end_at_newlines_only(built):
    """U+2028 and the other breaks of str.splitlines() are characters of a review, not ends."""
    root, _ = built
    reviews = ["A wonderful\u2028film, truly.", "Dull\x0cand\x85far\x1ctoo long.", "Fine\rfine."]
    text = f"{reviews[0]}\r\n{reviews[1]}\n{reviews[2]}\n"
    (root / "breaks.txt").write_text(text, newline="")
    predict(root, "--file", "breaks.txt", "--output", "breaks.parquet")
    assert pd.read_parquet(root / "breaks.parquet").text.tolist() == reviews


def test_predict_gives_a_defined_answer_for_odd_inputs(built):
    root, _ = built
    odd = [
        "",
        "   \t ",
        "<br /><p></p>",
        "great " * 200_000,
        "zzqx vbnm qwrtp",
        "素晴らしい映画 отличный",
    ]
    pd.DataFrame({"text": odd}).to_parquet(root / "odd.parquet")
    out = pd.read_csv(
        pd.io.common.StringIO(predict(root, "--file", "odd.parquet").stdout), keep_default_na=False
    )
    assert len(out) == len(odd)
    assert out.probability.between(0, 1).all() and out.label.isin(["positive", "negative"]).all()
    # Nothing of the empty, blank, HTML-only and non-Latin reviews survives cleaning: one answer.
    assert out.probability.iloc[[0, 1, 2, 5]].nunique() == 1


def test_predict_errors_are_one_line(built):
    root, _ = built
    missing = predict(root, "--file", "nope.csv", check=False)
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == "error: --file nope.csv does not exist"
    )
    (root / "bad.csv").write_text("review\nfine\n")
    bad = predict(root, "--file", "bad.csv", check=False)
    assert bad.returncode == 2 and "no column 'text', which --text-columns names" in bad.stderr
    (root / "data/model.pt").rename(root / "model.bak")
    try:
        untrained = predict(root, "hi", check=False)
    finally:
        (root / "model.bak").rename(root / "data/model.pt")
    assert untrained.returncode == 2 and "(`uv run dvc repro`)" in untrained.stderr


def test_predict_scores_with_the_models_own_vocab_and_settings(built):
    """After params.yaml's encode section changes and vocab.txt is gone, without a rerun,
    predict still scores as evaluate did: model.pt carries what it was trained with."""
    root, _ = built
    raw = pd.read_parquet(root / "data/raw/test.parquet")
    evaluated = pd.read_parquet(root / "data/predictions/test.parquet")
    params, vocab = (root / "params.yaml").read_text(), (root / "data/vocab.txt").read_bytes()
    write_params(root, **{**SMALL, "encode.max_len": 5, "encode.truncate": "head"})
    (root / "data/vocab.txt").unlink()
    try:
        raw.iloc[:20][["text"]].to_parquet(root / "first.parquet")
        out = pd.read_csv(io.StringIO(predict(root, "--file", "first.parquet").stdout))
    finally:
        (root / "params.yaml").write_text(params)
        (root / "data/vocab.txt").write_bytes(vocab)
    np.testing.assert_allclose(out.probability, evaluated.probability.iloc[:20], atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_predict_output_format_follows_the_extension(built, suffix):
    root, _ = built
    reference = pd.read_csv(io.StringIO(predict(root, "Great film.", "Awful.").stdout))
    predict(root, "Great film.", "Awful.", "--output", f"out{suffix}")
    path = root / f"out{suffix}"
    read = {".csv": pd.read_csv, ".parquet": pd.read_parquet}.get(
        suffix, lambda p: pd.read_json(p, lines=True)
    )
    written = read(path)
    assert written.columns.tolist() == ["text", "label", "probability"]
    assert written.text.tolist() == ["Great film.", "Awful."]
    np.testing.assert_allclose(written.probability, reference.probability, atol=1e-6)


def test_predict_reads_undecodable_argument_bytes_as_replacement_characters(built):
    """A shell passes bytes: Python gives the undecodable ones as lone surrogates (b"\\xff" is
    "\\udcff"), which parquet, CSV and JSON files refuse."""
    root, _ = built
    predict(root, "Great \udcff film.", "--output", "argv.parquet")
    assert pd.read_parquet(root / "argv.parquet").text.tolist() == ["Great \ufffd film."]


BAD_INPUTS = {
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary.csv: not UTF-8 text"),
    "malformed.csv": (b'text,x\n"a,1\nb,2,3,4\n', "malformed.csv: a row has 1 field where the"),
    "empty.csv": (b"", "empty.csv is empty"),
    "header.csv": (b"text\n", "header.csv holds no reviews"),
    "fake.parquet": (b"text\nnot parquet\n", "fake.parquet: not a readable Parquet file"),
    "binary.txt": (b"ok\n\x00\x01\x02\xff", "binary.txt: not text (it holds NUL bytes"),
    "latin1.txt": ("caf\u00e9".encode("latin-1"), "latin1.txt: not UTF-8 text"),
    "reviews.xlsx": (b"PK", "reviews.xlsx: expected a .txt file or a .csv, .tsv or .jsonl"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_predict_refuses_unreadable_files_in_one_line(built, name):
    root, _ = built
    data, message = BAD_INPUTS[name]
    (root / name).write_bytes(data)
    result = predict(root, "--file", name, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --file {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_refuses_a_txt_it_cannot_read_in_one_line(built, tmp_path):
    root, _ = built
    (tmp_path / "folder.txt").mkdir()
    result = predict(root, "--file", str(tmp_path / "folder.txt"), check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: --file {tmp_path}/folder.txt cannot be read (is a directory)\n"


@pytest.mark.parametrize("kind", [".tsv.gz", "parts"])
def test_predict_reads_the_tables_download_reads_with_the_same_columns(built, tmp_path, kind):
    """Amazon's reviews as distributed (no header row; label, title, text), compressed, or as a
    folder of Parquet parts: the title and text scored as one review."""
    root, _ = built
    amazon = REVIEWS[["label", "title", "text"]]
    write(amazon, tmp_path / f"reviews{kind}", header=False)
    named = ["--column-names", "label", "title", "text"] if kind != "parts" else []
    file = str(tmp_path / f"reviews{kind}")
    done = predict(root, "--file", file, "--text-columns", "title", "text", *named)
    out = pd.read_csv(io.StringIO(done.stdout))
    assert out.text.tolist() == [f"{t} {x}" for t, x in zip(amazon.title, amazon.text, strict=True)]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("no/such/folder/out.csv", "folder no/such/folder does not exist"),
        ("out.json", "expected a .csv, .parquet, .jsonl file name"),
        ("out", "expected a .csv, .parquet, .jsonl file name"),
    ],
)
def test_predict_refuses_bad_outputs_before_any_work(built, output, message):
    root, _ = built
    result = predict(root, "Great film.", "--output", output, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --output {output}: {message}"
    assert not (root / output).exists() and not list(root.glob("*.tmp"))
