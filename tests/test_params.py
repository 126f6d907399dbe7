import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, write_params
from zimdb import params
from zimdb.errors import PipelineError


def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid():
    params.validate(defaults())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.batch_size", 0, r"train.batch_size must be an integer >= 1, got 0"),
        ("vocab.size", 1, r"vocab.size must be an integer >= 3, got 1"),
        ("encode.max_len", -5, r"encode.max_len must be an integer >= 1, got -5"),
        ("split.val_fraction", 1.5, r"split.val_fraction must be a number > 0 and < 1, got 1.5"),
        ("train.lr", "fast", r"train.lr must be a number > 0, got 'fast'"),
        ("train.grad_accum_steps", 0, r"train.grad_accum_steps must be an integer >= 1, got 0"),
        ("train.epochs", 0, r"train.epochs must be an integer >= 1, got 0"),
        ("train.epochs", 2.5, r"train.epochs must be an integer >= 1, got 2.5"),
        (
            "train.precision",
            "half",
            r"train.precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'half'",
        ),
        ("train.epochs", True, r"train.epochs must be an integer >= 1, got True"),
        ("download.source", "kaggle", r"download.source must be one of 'modelscope', 'aclimdb'"),
        ("train.device", "tpu", r"train.device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
        (
            "download.labels",
            [[1, 2], [2, 3]],
            r"download.labels must be two classes, .*, got \[\[1, 2\], \[2, 3\]\] "
            r"\(the same label in both classes\)$",
        ),
        ("download.labels", [[], [1]], r"got \[\[\], \[1\]\] \(a class with no label\)$"),
        (
            "download.text_columns",
            ["title", "title"],
            r"download.text_columns must be .*, got \['title', 'title'\] \(a column named twice\)$",
        ),
    ],
)
def test_bad_values_are_named(key, value, message):
    p = defaults()
    section, name = key.split(".")
    p[section][name] = value
    with pytest.raises(PipelineError, match=message):
        params.validate(p)


def test_missing_and_unknown_keys_are_named():
    p = defaults()
    del p["train"]["lr"]
    with pytest.raises(PipelineError, match=r"missing key train.lr"):
        params.validate(p)
    p = defaults()
    p["train"]["learning_rate"] = 0.1
    with pytest.raises(PipelineError, match=r"unknown key train.learning_rate"):
        params.validate(p)
    p = defaults()
    p["trian"] = {}
    with pytest.raises(PipelineError, match=r"unknown section 'trian'"):
        params.validate(p)


def test_float_params_accept_integers():
    p = defaults()
    p["train"]["lr"] = 1
    params.validate(p)


def test_stage_exits_with_one_line_and_no_traceback(tmp_path):
    write_params(tmp_path, **{"train.batch_size": 0})
    result = subprocess.run(
        [sys.executable, "-m", "stages.download"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.batch_size must be an integer >= 1, got 0"
    ]
    assert not (tmp_path / "data").exists()


def test_cuda_device_without_gpu_is_a_clear_error(monkeypatch):
    from zimdb.model import device

    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match="train.device is 'cuda' but no CUDA GPU is visible"):
        device.resolve("cuda", "params.yaml: train.device")
    assert device.resolve("auto", "params.yaml: train.device").type == "cpu"
