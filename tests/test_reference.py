"""The reference run committed with the code: its dvc.lock and dvclive/ record of the default
params on the whole archive, what a fresh clone shows and compares against."""

import json
import re

import yaml
from ruamel.yaml import YAML

from docs import results
from tests.conftest import PLOTS, ROOT, dvc, make_project, run, stages

# The reference ran on the Stanford archive, where params.yaml's default reads ModelScope.
DATA_SOURCE = {"download.source", "download.archive"}
# What `dvc metrics show` lists: each model's headline, and the train run's.
HEADLINE = {"loss", "accuracy", "f1", "roc_auc"}
TRAIN_HEADLINE = {"step", "best_epoch", "val_acc", "samples_per_s"}


def lock() -> dict:
    # As DVC reads it: YAML 1.2, where the 5e-06 it writes is a number (PyYAML reads a string).
    return YAML(typ="safe").load((ROOT / "dvc.lock").read_text())["stages"]


def test_the_lock_is_of_today_s_pipeline_and_params():
    """A changed param, stage or command without a new reference run fails here."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(lock()) == list(stages())
    for name, stage in stages().items():
        locked = lock()[name]
        assert locked["cmd"] == stage["cmd"], name
        recorded = locked.get("params", {}).get("params.yaml", {})
        assert sorted(recorded) == sorted(stage.get("params", [])), name
        for key, value in recorded.items():
            section, field = key.split(".")
            if key not in DATA_SOURCE:
                assert value == params[section][field], (name, key)
    download = lock()["download"]["params"]["params.yaml"]
    assert download["download.source"] == "aclimdb"


def test_the_lock_names_no_path_of_the_machine_it_was_made_on():
    text = (ROOT / "dvc.lock").read_text()
    absolute = re.findall(r"(?<![\w.])(?:/[\w.-]+){2,}|~/|[A-Za-z]:\\\\", text)
    assert absolute == [], absolute


def test_git_holds_the_record_and_no_data_or_model():
    tracked = run(["git", "ls-files", "dvclive", "data", "dvc.lock"], ROOT).stdout.split()
    for stage in ("train", "evaluate", "baseline"):
        assert f"dvclive/{stage}/metrics.json" in tracked
    assert not [f for f in tracked if f.startswith("data/")]
    assert not [f for f in tracked if f.endswith((".pt", ".skops", ".npy", ".parquet"))]
    size = sum((ROOT / f).stat().st_size for f in tracked)
    assert size < 1 << 20, size  # the record is small: no model or data slipped in


def test_the_readme_s_results_table_is_the_record_s():
    readme = (ROOT / "README.md").read_text()
    block = results.BLOCK.search(readme)
    assert block and block[0] == block[1] + results.table() + block[2]


def test_a_fresh_copy_shows_the_reference_before_any_run(tmp_path):
    root = make_project(tmp_path / "clone")
    shown = json.loads(dvc("metrics", "show", "--json", cwd=root).stdout)
    files = next(iter(shown.values()))["data"]
    for stage in ("train", "evaluate", "baseline"):
        assert f"dvclive/{stage}/metrics.json" in files, stage
    assert set(files["dvclive/evaluate/metrics.json"]["data"]) == HEADLINE
    assert set(files["dvclive/baseline/metrics.json"]["data"]) == HEADLINE | {"val_acc"}
    assert set(files["dvclive/train/metrics.json"]["data"]) == TRAIN_HEADLINE
    plots = json.loads(dvc("plots", "show", "--json", cwd=root).stdout)
    assert "errors" not in plots and list(plots["data"]) == list(PLOTS)
    for charts in plots["data"].values():
        assert all(chart["content"]["data"]["values"] for chart in charts)


def test_metrics_show_fits_a_terminal_and_diff_lists_the_headline_alone(tmp_path):
    root = make_project(tmp_path / "clone")
    shown = dvc("metrics", "show", cwd=root).stdout.splitlines()
    assert len(shown) == 4 and max(map(len, shown)) <= 120, shown
    diff = json.loads(dvc("metrics", "diff", "--all", "--json", cwd=root).stdout)
    assert {path: set(rows) for path, rows in diff.items()} == {
        "dvclive/train/metrics.json": TRAIN_HEADLINE,
        "dvclive/evaluate/metrics.json": HEADLINE,
        "dvclive/baseline/metrics.json": HEADLINE | {"val_acc"},
    }


def test_the_record_keeps_accuracy_by_length_in_its_chart_s_file():
    cuts = {f"{end}_{k}" for end in ("first", "last") for k in (10, 20, 40)}
    for stage in ("evaluate", "baseline"):
        assert cuts <= set(results.by_length(stage)), stage
