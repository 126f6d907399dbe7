"""The train stage as a process: resuming after SIGINT/SIGKILL, NaN detection, DDP with gloo."""

import contextlib
import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from stages import train as train_stage
from tests.conftest import ROOT, encoded_records, git_init, interruptible, python_env, write_params
from zimdb.data.encoding import Encoding, write_encoding
from zimdb.model.batches import Encoded
from zimdb.model.file import ModelFile
from zimdb.model.inference import logits
from zimdb.paths import ENCODING, MODEL, TRAIN_STATE
from zimdb.scoring.lstm import LSTMScorer
from zimdb.training import distributed
from zimdb.training import run as run_module
from zimdb.training.step import lr_factor

TINY = {
    "train.embedding_dim": 16,
    "train.hidden_dim": 32,
    "train.batch_size": 32,
    "train.grad_accum_steps": 2,
    "train.device": "cpu",
    "train.precision": "fp32",
}


def make_data(root, n_train=960, n_val=160, vocab_size=60, max_len=40):
    """Encoded splits whose last three words are 2-5 (positive) or 6-9 (negative)."""
    vocab = ["<pad>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 2)]
    write_encoding(Encoding(vocab, max_len, "tail"), root / ENCODING)
    for seed, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        records = encoded_records(n, max_len, vocab_size, min_len=5, seed=seed)
        rng = np.random.default_rng(seed)
        positive = records["label"][:, None] == 1
        cue = np.where(positive, rng.integers(2, 6, (n, 3)), rng.integers(6, 10, (n, 3)))
        last = records["length"][:, None] - 1 - np.arange(3)
        np.put_along_axis(records["ids"], last, cue, axis=1)
        np.save(root / f"data/encoded/{split}.npy", records)


def start_train(root) -> subprocess.Popen:
    env = python_env() | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def train_here(root) -> str:
    """The train stage run in this process, and what it printed: for tests of what it computes
    and resumes, where a process of its own would only add seconds of imports."""
    out = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out):
        train_stage.main()
    return out.getvalue()


def workdir(tmp_path, name, n_train=960, **overrides):
    root = tmp_path / name
    root.mkdir()
    make_data(root, n_train=n_train)
    write_params(root, **(TINY | overrides))
    git_init(root)
    return root


def state(root) -> dict:
    return torch.load(root / "data/model.pt", weights_only=True)["state_dict"]


def saved_epochs(root) -> int:
    path = root / TRAIN_STATE
    return len(torch.load(path, weights_only=True)["history"]) if path.exists() else 0


EPOCHS = 3


# On top of params.yaml's train section (a loss at every position): without it.
VARIANTS = {"last-token-loss": {"train.position_loss": 0.0}}


@pytest.fixture(scope="module", params=["fp32+last-token-loss", "bf16"])
def uninterrupted(request, tmp_path_factory):
    """A whole run in each precision (bf16 is emulated, and slow, on a CPU without it), one
    with the loss at the last token alone, each resumed in the tests."""
    name, _, variant = request.param.partition("+")
    precision = {"train.epochs": EPOCHS, "train.precision": name} | VARIANTS.get(variant, {})
    root = workdir(tmp_path_factory.mktemp("whole"), "whole", **precision)
    train_here(root)
    return root, precision


def test_a_run_on_learnable_data_beats_chance(uninterrupted):
    root, _ = uninterrupted
    summary = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert summary["val_acc"] > 0.9  # words 2-5 positive, 6-9 negative: separable


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_to_the_same_model(tmp_path, uninterrupted, sig):
    (whole, precision), epochs = uninterrupted, EPOCHS
    cut = workdir(tmp_path, "cut", **precision)
    proc = start_train(cut)
    deadline = time.monotonic() + 120
    while saved_epochs(cut) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    done = saved_epochs(cut)
    assert 1 <= done < epochs, "the run ended before it could be interrupted mid-way"
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:
        assert "Traceback" not in err and "interrupted" in err
    assert not (cut / "data/model.pt").exists()  # no partial output for DVC or evaluate

    resumed = train_here(cut)
    assert f"resuming from {TRAIN_STATE}: epoch {done} of {epochs} done" in resumed
    a, b = state(whole), state(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curves = [json.loads((r / "dvclive/train/metrics.json").read_text()) for r in (whole, cut)]
    assert curves[0]["step"] == curves[1]["step"] == epochs  # dvclive's step is the epoch
    same = [{k: v for k, v in c.items() if k != "samples_per_s"} for c in curves]  # all but speed
    assert same[0] == same[1]
    # The resumed run replays its first epochs into dvclive: the same curves, epochs 1, 2, ...
    for curve in ("train/acc", "train/loss", "val/acc", "val/loss"):
        tsv = [(r / f"dvclive/train/plots/metrics/{curve}.tsv").read_text() for r in (whole, cut)]
        assert tsv[0] == tsv[1], curve
        assert [line.split("\t")[0] for line in tsv[0].splitlines()] == [
            "step",
            *map(str, range(1, epochs + 1)),
        ]


def python_script(script: str) -> subprocess.CompletedProcess:
    """`script` run by a Python of its own, which SIGINT interrupts as Ctrl-C would."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=interruptible,
    )


def test_ctrl_c_inside_a_progress_bar_s_constructor_prints_no_traceback():
    # Seen in CI: SIGINT landed in the next epoch's tqdm(), and the half-built bar's __del__
    # printed an AttributeError traceback after "interrupted".
    script = """
import tqdm
from zimdb.errors import run

class Bar(tqdm.tqdm):
    def __init__(self, *args, **kwargs):
        self.disable = False  # where tqdm's own __init__ stood, before it set self.pos
        raise KeyboardInterrupt

run(lambda: Bar(range(3)))
"""
    proc = python_script(script)
    assert proc.returncode == 130
    assert proc.stderr == "interrupted: nothing was written\n"


def test_ctrl_c_inside_a_finaliser_still_stops_the_run():
    # CPython cannot raise from a finaliser: it prints the KeyboardInterrupt and carries on.
    script = """
import time
from zimdb.errors import run

class Temp:
    def __del__(self):
        raise KeyboardInterrupt  # where Ctrl-C landed

def main():
    Temp()  # finalised at once
    time.sleep(30)
    print("carried on")

run(main)
"""
    start = time.monotonic()
    proc = python_script(script)
    assert (proc.returncode, proc.stdout) == (130, "")
    assert proc.stderr == "interrupted: nothing was written\n"
    assert time.monotonic() - start < 20


def test_other_finalisers_failing_after_ctrl_c_are_still_reported():
    script = """
import sys
from zimdb.errors import run

class Temp:
    def __del__(self):
        raise OSError("cleanup failed")

def interrupted():
    raise KeyboardInterrupt

try:
    run(interrupted)
except SystemExit as e:
    code = e.code
t = Temp()
del t  # its finaliser fails after the interrupt was handled: not a progress bar's
sys.exit(code)
"""
    proc = python_script(script)
    assert proc.returncode == 130
    assert proc.stderr.startswith("interrupted: nothing was written\n")
    assert "OSError: cleanup failed" in proc.stderr


def test_state_from_other_params_is_not_resumed(tmp_path):
    constant = {"train.lr_schedule": "constant"}
    root = workdir(tmp_path, "p", **constant, **{"train.epochs": 1})
    train_here(root)
    write_params(root, **TINY, **constant, **{"train.epochs": 2, "train.lr": 0.001})
    assert "is from other inputs or params; starting afresh" in train_here(root)
    write_params(root, **TINY, **constant, **{"train.epochs": 3, "train.lr": 0.001})
    # More epochs at a constant learning rate continue the finished run...
    assert f"resuming from {TRAIN_STATE}: epoch 2 of 3 done" in train_here(root)
    # ...but a cosine schedule over more epochs is another schedule from the first step.
    write_params(root, **TINY, **{"train.epochs": 3, "train.lr_schedule": "cosine"})
    train_here(root)
    write_params(root, **TINY, **{"train.epochs": 4, "train.lr_schedule": "cosine"})
    assert "is from other inputs or params; starting afresh" in train_here(root)


def test_cosine_schedule_decays_from_lr_to_zero_over_the_run():
    factor = lr_factor("cosine", 100)
    assert [factor(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor("constant", 100)(70) == 1.0


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    from zimdb.errors import PipelineError
    from zimdb.model.lstm import Logits, SentimentLSTM

    # No memory estimate: it runs the forward pass twice before training, and these are counted.
    root = workdir(tmp_path, "nan", **{"train.epochs": 1, "train.grad_checkpointing": False})
    monkeypatch.chdir(root)
    forward, calls = SentimentLSTM.forward, []

    def poisoned(self, ids, lengths, **kw):  # the 3rd micro-batch, in the 2nd window: NaN
        calls.append(1)
        out = forward(self, ids, lengths, **kw)
        if len(calls) != 3:
            return out
        return Logits(*(o * float("nan") for o in out))

    monkeypatch.setattr(SentimentLSTM, "forward", poisoned)
    with pytest.raises(
        PipelineError, match=r"train loss became non-finite at epoch 1, step 2; lower"
    ):
        train_stage.main()
    assert not (root / "data/model.pt").exists()


def test_utilisation_is_read_against_the_highest_peak_reading_so_far(tmp_path, monkeypatch):
    root = workdir(tmp_path, "peak", **{"train.epochs": 3, "train.precision": "fp32"})
    monkeypatch.chdir(root)
    readings = iter([2e9, 1e9, 4e9, 3e9])  # at the start, then after each epoch
    monkeypatch.setattr(run_module, "peak_flops", lambda device, dtype: next(readings))
    train_stage.main()
    history = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert history["step"] == 3
    rows = (root / "dvclive/train/plots/metrics/utilisation.tsv").read_text().splitlines()[1:]
    gflops = (root / "dvclive/train/plots/metrics/gflops.tsv").read_text().splitlines()[1:]
    for row, speed, peak in zip(rows, gflops, (2e9, 4e9, 4e9), strict=True):
        assert float(row.split("\t")[-1]) == pytest.approx(
            float(speed.split("\t")[-1]) * 1e9 / peak
        )


def test_re_reading_the_peak_between_epochs_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    overrides = {"train.epochs": 2, "train.dropout": 0.3}  # dropout: draws from torch's RNG
    measured, constant = (workdir(tmp_path, name, **overrides) for name in ("measured", "const"))
    monkeypatch.chdir(measured)
    train_stage.main()
    monkeypatch.setattr(run_module, "peak_flops", lambda device, dtype: 1e9)
    monkeypatch.chdir(constant)
    train_stage.main()
    for name, weights in state(measured).items():
        assert torch.equal(weights, state(constant)[name]), name


def test_shards_are_disjoint_equal_and_change_with_the_epoch_order():
    batches = list(range(11))
    shards = [distributed.shard(batches, distributed.Group(r, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == list(range(9))
    assert distributed.shard(batches[::-1], distributed.Group(0, 0, 3)) != shards[0]


def test_ddp_with_gloo_on_two_processes(tmp_path, monkeypatch, capfd):
    # 950 reviews in batches of 32: 29 of 32 and one of 22, which only one process reads.
    ddp = {"train.epochs": 1, "train.nproc_per_node": 2}
    root = workdir(tmp_path, "ddp", n_train=950, **ddp)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # torchrun's processes import stages.train
    with pytest.raises(SystemExit) as launcher:  # the stage's process exits with torchrun's code
        train_stage.main()
    assert launcher.value.code == 0, capfd.readouterr().err
    out = capfd.readouterr().out
    assert "launching 2 processes" in out and "device cpu x 2" in out
    assert out.count("saved data/model.pt") == 1  # rank 0 alone logs and saves
    curves = {
        name: float((root / f"dvclive/train/plots/metrics/{name}.tsv").read_text().split()[-1])
        for name in ("val/acc", "val/loss", "samples_per_s", "epoch_time_s")
    }
    # The model after its only epoch, scored on the whole val split by one process, gives the
    # val metrics the two processes reduced from their halves.
    val_records = np.load(root / "data/encoded/val.npy")
    val = Encoded.from_records(val_records, torch.device("cpu"))
    model = LSTMScorer.load(root / "data/model.pt").file.model
    out = logits(model, val, 64, contextlib.nullcontext())
    labels = torch.from_numpy(val.labels)
    val_acc = ((out > 0) == (labels > 0.5)).float().mean().item()
    val_loss = torch.nn.functional.binary_cross_entropy_with_logits(out, labels).item()
    assert curves["val/acc"] == pytest.approx(val_acc, abs=1e-6)
    assert curves["val/loss"] == pytest.approx(val_loss, rel=1e-4)
    # 30 batches, an even number: both processes see 15 each, one of them the short one. The
    # samples are counted across processes, not as one process's count times two (960).
    assert curves["samples_per_s"] * curves["epoch_time_s"] == pytest.approx(950)


def test_state_from_another_device_or_precision_is_not_resumed(tmp_path):
    from zimdb.params import Train
    from zimdb.training.state import fingerprint, identity

    root = workdir(tmp_path, "fp")
    p = Train(**yaml.safe_load((root / "params.yaml").read_text())["train"])
    files = {str(ENCODING): root / ENCODING}
    precisions = ("fp32", "bf16", "fp16")
    made = {(d, x): identity(p, files, d, x) for d in ("cpu", "cuda") for x in precisions}
    assert len({fingerprint(m, 1) for m in made.values()}) == 6
    assert fingerprint(made["cpu", "fp32"], 1) != fingerprint(made["cpu", "fp32"], 2)


def test_too_few_batches_for_the_processes_is_one_line(tmp_path):
    from zimdb.errors import PipelineError

    root = workdir(tmp_path, "few", **{"train.nproc_per_node": 2})
    write_params(root, **{**TINY, "train.batch_size": 960, "train.nproc_per_node": 2})
    with (
        contextlib.chdir(root),
        pytest.raises(
            PipelineError,
            match=r"960 train reviews in batches of train.batch_size=960 are too few for train.nproc_per_node=2 processes$",
        ),
    ):
        train_stage.main()


def test_a_torchrun_with_more_processes_than_batches_is_one_line(tmp_path, monkeypatch):
    """A torchrun started by hand sets the processes, not train.nproc_per_node: a process
    without a batch would make no step (and divide by zero steps in its schedule)."""
    from zimdb.errors import PipelineError

    root = workdir(tmp_path, "by-hand")
    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "init", lambda device_type: distributed.Group(0, 0, 40))
    with (
        contextlib.chdir(root),
        pytest.raises(
            PipelineError,
            match=r"960 train reviews in batches of train.batch_size=32 are too few for "
            r"torchrun's WORLD_SIZE=40 processes$",
        ),
    ):
        train_stage.main()


def test_a_state_of_another_layout_starts_afresh_in_one_line(tmp_path):
    root = workdir(tmp_path, "layout", **{"train.epochs": 2})
    train_here(root)
    state = torch.load(root / TRAIN_STATE, weights_only=True)
    del state["scaler"]  # as a version that saved no scaler would have written it
    torch.save(state, root / TRAIN_STATE)
    (root / MODEL).unlink()
    assert f"{TRAIN_STATE} is of another layout; starting afresh" in train_here(root)
    assert (root / MODEL).exists()


def test_a_failure_after_the_last_epoch_loses_no_epoch(tmp_path, uninterrupted, monkeypatch):
    (whole, precision), epochs = uninterrupted, EPOCHS
    root = workdir(tmp_path, "late", **precision)
    save = ModelFile.save

    def full_disk(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ModelFile, "save", full_disk)
    with pytest.raises(OSError), contextlib.chdir(root):
        train_stage.main()
    assert saved_epochs(root) == epochs and not (root / MODEL).exists()
    monkeypatch.setattr(ModelFile, "save", save)
    out = train_here(root)
    assert f"resuming from {TRAIN_STATE}: epoch {epochs} of {epochs} done" in out
    assert "epoch 1/" not in out  # no epoch trained again
    a, b = state(whole), state(root)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_file_keeps_the_encoding_of_the_arrays_it_trained_on(tmp_path):
    # params.yaml's encode section says otherwise, as if edited since encode ran: what counts
    # is what data/encoded was made with, which encode wrote beside the arrays.
    root = workdir(tmp_path, "edited", **{"train.epochs": 1, "encode.max_len": 99})
    write_params(
        root, **TINY, **{"train.epochs": 1, "encode.max_len": 99, "encode.truncate": "head"}
    )
    train_here(root)
    saved = ModelFile.load(root / MODEL).encoding
    assert saved == Encoding(**json.loads((root / ENCODING).read_text()))
    assert (saved.max_len, saved.truncate) == (40, "tail")


def test_concat_pooling_trains_with_the_loss_at_every_position_and_has_a_running_verdict(
    tmp_path,
):
    root = workdir(tmp_path, "concat", **{"train.pooling": "concat", "train.epochs": 2})
    train_here(root)
    saved = ModelFile.load(root / MODEL)
    assert saved.model.config.pooling == "concat"
    summary = json.loads((root / "dvclive/train/metrics.json").read_text())
    assert summary["val_acc"] > 0.9  # the learnable data of the runs above
    # Ids 2-5 end the positive reviews, ids 6-9 the negative ones; cleaning keeps letters only,
    # so the page's words for the ids are letters: "a" is id 2.
    vocab = saved.encoding.vocab
    letters = vocab[:2] + [chr(ord("a") + i) for i in range(len(vocab) - 2)]
    trained = LSTMScorer.of(ModelFile(saved.model, Encoding(letters, 40, "tail"), "fp32"))
    for review, positive in (("k j a b c", True), ("k b e f g", False)):
        reading = trained.read(review)
        assert len(reading.running) == 5
        assert reading.running[-1] == pytest.approx(reading.probability, abs=1e-6)
        assert (reading.probability > 0.5) == positive


def test_the_resume_fingerprint_hashes_exactly_the_code_dvc_yaml_lists(tmp_path, monkeypatch):
    """One list of the code that shapes training: what the fingerprint reads is what dvc.yaml
    gives the train stage as its code deps, both from zimdb.imports."""
    from tests.conftest import stages

    root = workdir(tmp_path, "fp", **{"train.epochs": 1})
    hashed = {}
    real = train_stage.identity

    def recorded(p, files, *rest):
        hashed.update(files)
        return real(p, files, *rest)

    monkeypatch.setattr(train_stage, "identity", recorded)
    train_here(root)
    code = {name for name, path in hashed.items() if path.suffix == ".py"}
    assert code == {d for d in stages()["train"]["deps"] if d.endswith(".py")}
    assert all(path == ROOT / name for name, path in hashed.items() if path.suffix == ".py")
    assert {name for name, path in hashed.items() if path.suffix != ".py"} == {
        str(ENCODING),
        *(str(ENCODING.parent / f"{s}.npy") for s in ("train", "val")),
    }
