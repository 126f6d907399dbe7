"""What DVC gives a user of this project, through the real `dvc` CLI on a small subset:
exact reruns, determinism, comparisons, experiments, a shared cache, interrupted stages."""

import json
import os
import signal
import subprocess
import sys
import time
import typing

import annotated_types
import yaml

from tests.conftest import (
    PLOTS,
    ROOT,
    SMALL,
    commit,
    dvc,
    expected_code_deps,
    expected_params,
    interruptible,
    python_env,
    run,
    source_files,
    write_params,
)
from zimdb.params import Params
from zimdb.paths import TRAIN_STATE

STAGES = ["download", "clean", "vocab", "encode", "train", "evaluate", "baseline"]


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in result.stdout}


def changed_value(key: str, value):
    """A different value that params.yaml still accepts."""
    section, name = key.split(".")
    field = Params.model_fields[section].annotation.model_fields[name]
    if typing.get_origin(field.annotation) is typing.Literal:
        return next(c for c in typing.get_args(field.annotation) if c != value)
    if field.annotation is bool or value == "auto":  # bool | Literal["auto"] too
        return True if value == "auto" else not value
    if isinstance(value, list):  # download.labels: the two classes swapped; names: one more
        return value[::-1] if len(value) > 1 else [*value, "changed"]
    if field.annotation is str:
        return value + "-changed"
    if field.annotation is float and any(isinstance(m, annotated_types.Lt) for m in field.metadata):
        return value / 2 if value else 0.5
    return value + 1


def status(root) -> set[str]:
    """Stage names `dvc status --json` would list: the same call, through DVC's Python API
    (one CLI process per key would take a minute for the whole table)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name.rsplit(":", 1)[-1] for name in repo.status()}


def test_status_names_exactly_the_stages_that_read_each_key_and_file(clean_project):
    root = clean_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    readers = expected_params()
    for section, values in params.items():
        for name, value in values.items():
            key = f"{section}.{name}"
            original = (root / "params.yaml").read_text()
            write_params(root, **(SMALL | {key: changed_value(key, value)}))
            expected = {s for s, keys in readers.items() if key in keys}
            assert status(root) == expected, key
            (root / "params.yaml").write_text(original)
    importers = expected_code_deps()
    for path in source_files():
        original = (root / path).read_text()
        (root / path).write_text(original + "\n# touched\n")
        assert status(root) == {s for s, deps in importers.items() if path in deps}, path
        (root / path).write_text(original)
    assert status(root) == set()


def test_a_change_to_the_page_s_reading_retrains_nothing(clean_project):
    """The word-by-word reading the service draws lives with the LSTM's scoring, apart from
    model.pt's format, which train imports to save the model: editing it reruns evaluate, which
    scores through the same module, and never train."""
    root = clean_project
    scorer = root / "zimdb/scoring/lstm.py"
    scorer.write_text(
        scorer.read_text().replace("cut=len(words) - len(kept),", "cut=len(words) - len(kept) + 0,")
    )
    assert status(root) == {"evaluate"}


def test_real_reruns_stop_where_bytes_stop_changing(clean_project):
    root = clean_project
    # An experiment in the workspace: -S edits params.yaml, then DVC reruns what reads the key.
    # train.epochs is set to the value it has: only train.lr changes.
    exp = dvc("exp", "run", "-S", "train.lr=0.001", "-S", "train.epochs=2", cwd=root)
    assert ran(exp) == {"train", "evaluate"}

    diff = json.loads(dvc("params", "diff", "--json", cwd=root).stdout)
    assert list(diff["params.yaml"]) == ["train.lr"]
    assert (
        diff["params.yaml"]["train.lr"]["old"]
        == yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr"]
    )
    assert diff["params.yaml"]["train.lr"]["new"] == 0.001
    metrics = json.loads(dvc("metrics", "diff", "--json", cwd=root).stdout)
    loss = metrics["dvclive/evaluate/metrics.json"]["loss"]  # only changed metrics are listed
    assert loss["new"] != loss["old"]
    dvc("plots", "diff", "--out", "plots_diff", cwd=root)
    assert "ROC" in (root / "plots_diff/index.html").read_text()
    # The same charts as `dvc plots show`, each drawing both runs (git-tracked dvclive files).
    plots = json.loads(dvc("plots", "diff", "--json", cwd=root).stdout)
    assert "errors" not in plots and list(plots["data"]) == list(PLOTS)
    for plot_id, charts in plots["data"].items():
        assert [sorted(c["revisions"]) for c in charts] == [["HEAD", "workspace"]], plot_id

    # download.dataset is not used with source aclimdb: download reruns, writes the same bytes,
    # and DVC stops there.
    write_params(root, **(SMALL | {"train.lr": 0.001, "download.dataset": "other"}))
    result = dvc("repro", cwd=root)
    assert ran(result) == {"download"}
    assert "Stage 'clean' didn't change, skipping" in result.stdout

    write_params(
        root, **(SMALL | {"train.lr": 0.001, "download.dataset": "other", "split.seed": 7})
    )
    assert ran(dvc("repro", cwd=root)) == {
        "clean",
        "vocab",
        "encode",
        "train",
        "evaluate",
        "baseline",
    }


def lock_hashes(root) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])}


def test_force_rerun_from_scratch_is_byte_identical(clean_project):
    root = clean_project
    before = lock_hashes(root)
    result = dvc("repro", "--force", cwd=root)
    assert ran(result) == set(STAGES)
    after = lock_hashes(root)
    # dvclive/train records epoch times, which no two runs share; skops names the baseline's
    # arrays and nodes by their memory addresses (id()) and stamps the time, so the same fitted
    # pipeline saves to other bytes (its metrics, below, are the same). Everything else is equal.
    unequal = {p for p in before if p.startswith("dvclive/train")} | {"data/baseline.skops"}
    assert {p: h for p, h in after.items() if p not in unequal} == {
        p: h for p, h in before.items() if p not in unequal
    }
    assert "dvclive/baseline/metrics.json" in after
    assert "data/model.pt" in after and "dvclive/evaluate/metrics.json" in after


def test_a_queued_grid_runs_and_exp_show_lists_it(clean_project):
    root = clean_project
    dvc("exp", "remove", "--all-commits", cwd=root)  # experiments other tests left in this copy
    dvc("exp", "run", "--queue", "-S", "train.lr=0.001,0.002", cwd=root)
    dvc("queue", "start", cwd=root)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        queue = dvc("queue", "status", cwd=root).stdout
        if "Queued" not in queue and "Running" not in queue:
            break
        time.sleep(0.5)
    assert "Failed" not in queue, queue
    dvc("queue", "stop", cwd=root, check=False)
    shown = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    experiments = [e for baseline in shown for e in (baseline.get("experiments") or [])]
    runs = []
    for experiment in experiments:
        for exp_run in experiment["revs"]:
            data = exp_run["data"]
            lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
            accuracy = data["metrics"]["dvclive/evaluate/metrics.json"]["data"]["accuracy"]
            runs.append((lr, 0 <= accuracy <= 1))
    assert sorted(runs) == [(0.001, True), (0.002, True)]


def test_push_then_pull_in_a_fresh_clone_needs_no_rerun(clean_project, tmp_path):
    root = clean_project
    dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"), cwd=root)
    commit(root, "remote")
    dvc("push", cwd=root)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    dvc("pull", cwd=clone)
    assert "Running stage" not in dvc("repro", cwd=clone).stdout
    assert "Data and pipelines are up to date." in dvc("status", cwd=clone).stdout
    shown = [json.loads(dvc("metrics", "show", "--json", cwd=r).stdout) for r in (root, clone)]
    assert shown[0] == shown[1]


# Ctrl-C through DVC here; SIGKILL of the stage itself is in test_training_runs.
def test_interrupted_train_leaves_nothing_dvc_would_use(clean_project):
    root = clean_project
    write_params(root, **(SMALL | {"train.epochs": 15, "train.lr": 0.002}))
    saved_state = root / TRAIN_STATE
    saved_state.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=root,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 120
    while not saved_state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # train has finished its first epoch once its state is saved
    assert saved_state.exists() and proc.poll() is None, "train saved no state while running"
    for _ in range(3):
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground process group
        try:
            output, _ = proc.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            # CPython prints and drops a KeyboardInterrupt raised inside a finaliser (__del__),
            # so, as a user would, press Ctrl-C again.
            continue
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("dvc repro did not stop after 3 Ctrl-C's, 30 s apart")
    assert proc.returncode != 0, output
    assert not (root / "data/model.pt").exists()
    assert "train" in dvc("status", "--json", cwd=root).stdout
    result = dvc("repro", cwd=root)
    assert ran(result) == {"train", "evaluate"}
    assert f"resuming from {TRAIN_STATE}" in result.stdout
    assert "Data and pipelines are up to date." in dvc("status", cwd=root).stdout


def test_a_run_started_by_hand_reaches_dvc_by_commit(clean_project):
    """torchrun started by hand, as on several machines, is no `dvc repro`: `dvc commit -f train`
    records its outputs, and `dvc repro` then scores them (evaluate alone)."""
    root = clean_project
    write_params(root, **(SMALL | {"train.epochs": 1}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run([*torchrun, "-m", "stages.train"], root)
    assert status(root) == {"train", "evaluate"}  # train's outputs and params are new to DVC
    dvc("commit", "--force", "train", cwd=root)  # its params changed: DVC asks for --force
    assert status(root) == {"evaluate"}
    assert ran(dvc("repro", cwd=root)) == {"evaluate"}
