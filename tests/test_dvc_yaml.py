"""dvc.yaml declares, for every stage, exactly the code it imports and the params it reads.

Derived from the code itself (imports and `params.load(...)` calls), so a module or a key added
later without its dvc.yaml entry fails here; test_dvc_workflow checks DVC acts on it.
"""

import yaml

from tests.conftest import ROOT, expected_code_deps, expected_params, source_files, stages
from zimdb.paths import MODEL


def test_code_deps_are_exactly_the_imported_files():
    for name, stage in stages().items():
        declared = {d for d in stage["deps"] if d.endswith(".py")}
        assert declared == expected_code_deps()[name], name


def test_params_are_exactly_the_keys_read_as_full_keys():
    for name, stage in stages().items():
        declared = stage.get("params", [])
        assert all(isinstance(k, str) and "." in k for k in declared), f"{name}: list full keys"
        assert set(declared) == expected_params()[name], name


def test_every_param_and_source_file_is_accounted_for():
    all_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = {f"{s}.{k}" for s, values in all_params.items() for k in values}
    assert set().union(*expected_params().values()) == keys  # no key read by no stage
    used = set().union(*expected_code_deps().values())
    # predict and serve are commands, not stages, and what only they use (loading either model
    # file) reruns nothing either.
    commands = {
        "zimdb/predict.py",
        "zimdb/serve/__main__.py",
        "zimdb/serve/app.py",
        "zimdb/serve/worker.py",
        "zimdb/scoring/files.py",
    }
    assert set(source_files()) - used == commands


def test_data_deps_are_outs_of_earlier_stages_or_files_the_stage_s_params_name():
    produced = {}
    for name, stage in stages().items():
        for dep in stage["deps"]:
            if dep.startswith("${"):  # the user's files, named in params.yaml: download.train
                assert dep.removeprefix("${").removesuffix("}") in stage["params"], (name, dep)
            elif not dep.endswith(".py"):
                assert dep in produced, f"{name} reads {dep}, which no earlier stage writes"
        for out in stage.get("outs", []):
            produced[out if isinstance(out, str) else next(iter(out))] = name


def test_the_model_artifact_is_what_train_writes():
    artifact = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]["zimdb-sentiment"]
    assert artifact["type"] == "model" and artifact["path"] == str(MODEL)
    assert str(MODEL) in stages()["train"]["outs"]
