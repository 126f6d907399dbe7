"""dvc.yaml declares, for every stage, exactly the code it imports and the params it reads.

Derived from the code itself (imports and `params.load(...)` calls), so a module or a key added
later without its dvc.yaml entry fails here; test_dvc_workflow checks DVC acts on it.
"""

import ast
from pathlib import Path

import yaml

from tests.conftest import ROOT
from zimdb.paths import MODEL


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(cmd: str) -> Path:
    prefix = "python -m "
    assert cmd.startswith(prefix), cmd
    return Path(*cmd[len(prefix) :].split(".")).with_suffix(".py")


def project_imports(path: Path) -> set[Path]:
    """Project files `path` imports, directly or through other project modules."""
    found: set[Path] = set()
    todo = [path]
    while todo:
        tree = ast.parse((ROOT / todo.pop()).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                candidate = Path(*name.split(".")).with_suffix(".py")
                if (ROOT / candidate).is_file() and candidate not in found:
                    found.add(candidate)
                    todo.append(candidate)
    return found


def sections_read(path: Path) -> set[str]:
    """Sections of params.yaml the module loads with params.load("<section>")."""
    tree = ast.parse((ROOT / path).read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "params"
    }


def expected_code_deps() -> dict[str, set[str]]:
    return {
        name: {str(p) for p in {module_file(s["cmd"])} | project_imports(module_file(s["cmd"]))}
        for name, s in stages().items()
    }


def expected_params() -> dict[str, set[str]]:
    all_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {
        name: {
            f"{sec}.{key}"
            for sec in sections_read(module_file(s["cmd"]))
            for key in all_params[sec]
        }
        for name, s in stages().items()
    }


def source_files() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT)) for d in ("stages", "zimdb") for p in (ROOT / d).glob("*.py")
    )


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
    # predict and serve are commands, not stages: no change to them may rerun anything.
    assert set(source_files()) - used == {"zimdb/predict.py", "zimdb/serve.py"}


def test_data_deps_are_outs_of_earlier_stages():
    produced = {}
    for name, stage in stages().items():
        for dep in stage["deps"]:
            if not dep.endswith(".py"):
                assert dep in produced, f"{name} reads {dep}, which no earlier stage writes"
        for out in stage.get("outs", []):
            produced[out if isinstance(out, str) else next(iter(out))] = name


def test_the_model_artifact_is_what_train_writes():
    artifact = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]["zimdb-sentiment"]
    assert artifact["type"] == "model" and artifact["path"] == str(MODEL)
    assert str(MODEL) in stages()["train"]["outs"]
