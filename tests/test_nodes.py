"""Training across processes and machines under torchrun, rehearsed on this machine: two nodes,
each a torchrun agent in a working copy of its own, meet through a c10d rendezvous on 127.0.0.1
and train over gloo; a lost worker is restarted and the run resumes, or the group stops in one
line; a group that comes back with another size starts afresh.

A worker is lost at a known step by tests/hooks/sitecustomize.py (ZIMDB_LOSE), on PYTHONPATH,
so that no kill races the run. Threads are pinned to one a process (OMP_NUM_THREADS=1, as
torchrun sets it for several processes a node) in every run, so that their floats compare.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from benchmarks.lost_worker import end
from tests.conftest import ROOT, python_env
from tests.test_training_runs import workdir
from zimdb.paths import MODEL, TRAIN_STATE

HOOKS = Path(__file__).parent / "hooks"
NODE = {  # a few hundred reviews and a 16-wide model: every run here takes seconds
    "train.embedding_dim": 16,
    "train.hidden_dim": 16,
    "train.batch_size": 16,
    "train.grad_accum_steps": 1,
    "train.epochs": 3,
}
REVIEWS = 400  # 25 batches an epoch: 12 a process, plus the short one
KILL_AT = 12 + 5  # rank 1's optimizer step mid-way through epoch 2
TIMEOUT = 10  # seconds a collective waits for a silent process here (ZIMDB_GROUP_TIMEOUT)


def readme_command(
    port: int, processes: int = 1, restarts: int | None = None, host: str = "127.0.0.1"
) -> list[str]:
    """The README's multi-node torchrun command, with this test's sizes: one process a node,
    the rendezvous on `host`:`port`, and `restarts` where given."""
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"uv run torchrun --nnodes=2(?:[^\n\\]|\\\n)*", readme)[0]
    args = shlex.split(line.replace("\\\n", " "))[3:]  # less `uv run torchrun`
    sized = {"--nproc_per_node": str(processes), "--rdzv_endpoint": f"{host}:{port}"}
    if restarts is not None:
        sized["--max-restarts"] = str(restarts)
    out = []
    for arg in args:
        name, _, value = arg.partition("=")
        out.append(f"{name}={sized[name]}" if name in sized and value else arg)
    return [sys.executable, "-m", "torch.distributed.run", *out]


@pytest.fixture
def free_port():
    """A port nobody listens on, and that no other test of a parallel run holds: the kernel
    names a free one, and a lock file claims it until the test ends."""
    claims = Path(tempfile.gettempdir()) / "zimdb-test-ports"
    claims.mkdir(exist_ok=True)
    held = []

    def claim() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            try:
                os.close(os.open(claims / str(port), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            held.append(claims / str(port))
            return port

    yield claim
    for path in held:
        path.unlink(missing_ok=True)


def env(**extra) -> dict[str, str]:
    return (
        python_env()
        | {
            "PYTHONPATH": f"{HOOKS}{os.pathsep}{ROOT}",
            "OMP_NUM_THREADS": "1",
            "ZIMDB_GROUP_TIMEOUT": str(TIMEOUT),
        }
        | extra
    )


def start(cmd: list[str], cwd: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    """Each process's exit code, stdout and stderr; whatever still runs at `timeout` is killed
    with everything it started, and the test fails."""
    results = []
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            end(proc)
    return results


def standalone(processes: int = 2, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        f"--max-restarts={restarts}",
        "-m",
        "stages.train",
    ]


def model(root: Path) -> dict:
    return torch.load(root / MODEL, weights_only=True)["state_dict"]


def same_model(a: Path, b: Path) -> bool:
    x, y = model(a), model(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One node of two processes, never interrupted: the model every other run must equal."""
    root = workdir(tmp_path_factory.mktemp("one"), "node", n_train=REVIEWS, **NODE)
    ((code, out, err),) = finish([start(standalone(), root)])
    assert code == 0, err
    return root


def test_two_nodes_write_the_model_one_node_of_two_processes_writes(
    tmp_path, uninterrupted, free_port
):
    nodes = [workdir(tmp_path, name, n_train=REVIEWS, **NODE) for name in ("a", "b")]
    cmd = readme_command(free_port())
    results = finish([start(cmd, node) for node in nodes])
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert sum("device cpu x 2" in out for _, out, _ in results) == 1  # rank 0 alone logs
    for node in nodes:  # each node's first process writes the node's model and curves
        assert same_model(node, uninterrupted), node
        assert (node / "dvclive/train/metrics.json").exists()


@pytest.fixture
def two_hosts():
    """Two hosts on this machine: network namespaces joined by a veth pair, the first at
    10.231.0.2 and the second at 10.231.0.1; for each, the prefix that runs a command there
    (`[*prefix, *cmd]`), its address and its interface. Skipped where namespaces cannot be
    made (not root, or no iproute2)."""
    names = [f"zimdb{os.getpid()}{side}" for side in "ab"]
    made = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        for name in names:
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", f"{names[0]}v", "type", "veth", "peer", "name", f"{names[1]}v")
        for name, address in zip(names, ("10.231.0.2", "10.231.0.1"), strict=True):
            ip("link", "set", f"{name}v", "netns", name)
            ip("-n", name, "addr", "add", f"{address}/24", "dev", f"{name}v")
            ip("-n", name, "link", "set", f"{name}v", "up")
            ip("-n", name, "link", "set", "lo", "up")
    except (OSError, subprocess.CalledProcessError) as e:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"no network namespaces here: {getattr(e, 'stderr', b'') or e}")
    yield [
        (["ip", "netns", "exec", name], address, f"{name}v")
        for name, address in zip(names, ("10.231.0.2", "10.231.0.1"), strict=True)
    ]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_rank_0_on_another_host_than_the_rendezvous(tmp_path, two_hosts, uninterrupted):
    """The rendezvous on the first host; the second, whose address sorts first, gets rank 0
    (torchrun ranks nodes by their address): the group's store is served from there. Each host
    names its address (--local-addr) and the interface gloo is to use (GLOO_SOCKET_IFNAME), and
    the first says it hosts the rendezvous: torchrun and gloo would find both from the host
    name, which names neither namespace's address here."""
    nodes = [workdir(tmp_path, name, n_train=REVIEWS, **NODE) for name in ("a", "b")]
    cmd = readme_command(29500, host="10.231.0.2")
    procs = []
    for (prefix, address, interface), node, hosts in zip(two_hosts, nodes, ("1", "0"), strict=True):
        named = [f"--local-addr={address}", f"--rdzv_conf=is_host={hosts}"]
        procs.append(
            start([*prefix, *cmd[:3], *named, *cmd[3:]], node, GLOO_SOCKET_IFNAME=interface)
        )
    results = finish(procs)
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert "device cpu x 2" in results[1][1] and "device cpu x 2" not in results[0][1]
    for node in nodes:
        assert same_model(node, uninterrupted), node


def test_a_node_with_other_data_is_refused_in_one_line(tmp_path, free_port):
    a = workdir(tmp_path, "a", n_train=REVIEWS, **NODE)
    b = workdir(tmp_path, "b", n_train=REVIEWS + 16, **NODE)
    cmd = readme_command(free_port(), restarts=0)
    results = finish([start(cmd, node) for node in (a, b)])
    assert all(code != 0 for code, _, _ in results)
    lines = [
        line for _, _, err in results for line in err.splitlines() if line.startswith("error: ")
    ]
    assert len(lines) == 2 and lines[0] == lines[1], lines  # one line on each node
    assert re.fullmatch(
        r"error: rank 1's data/encoded/train\.npy differs from rank 0's: every node needs the "
        r"same params\.yaml, code and data .*",
        lines[0],
    )
    assert not (a / MODEL).exists() and not (b / MODEL).exists()


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_lost(tmp_path, uninterrupted):
    """Through the stage's own relaunch (train.nproc_per_node), torchrun's restarts set by its
    environment variable. Restarted, rank 0 comes late: rank 1 first finds the lost group's post
    of its store, and waits for the new one."""
    root = workdir(tmp_path, "node", n_train=REVIEWS, **NODE, **{"train.nproc_per_node": 2})
    lose = {"ZIMDB_LOSE": f"1:{KILL_AT}:KILL", "ZIMDB_LATE": "0:3", "PET_MAX_RESTARTS": "1"}
    ((code, out, err),) = finish([start([sys.executable, "-m", "stages.train"], root, **lose)])
    assert code == 0, err[-3000:]
    assert "launching 2 processes, 1 restart(s)" in out
    assert f"resuming from {TRAIN_STATE}: epoch 1 of 3 done" in out
    assert same_model(root, uninterrupted)


def test_a_killed_worker_on_one_of_two_nodes_is_restarted(tmp_path, uninterrupted, free_port):
    nodes = [workdir(tmp_path, name, n_train=REVIEWS, **NODE) for name in ("a", "b")]
    cmd = readme_command(free_port(), restarts=1)
    lose = f"1:{KILL_AT}:KILL"
    results = finish([start(cmd, node, ZIMDB_LOSE=lose) for node in nodes])
    assert [code for code, _, _ in results] == [0, 0], [err[-3000:] for _, _, err in results]
    assert any(f"resuming from {TRAIN_STATE}: epoch 1 of 3 done" in out for _, out, _ in results)
    for node in nodes:
        assert same_model(node, uninterrupted), node


def test_a_killed_worker_with_no_restart_left_stops_the_group_in_one_line(tmp_path, uninterrupted):
    root = workdir(tmp_path, "node", n_train=REVIEWS, **NODE)
    ((code, out, err),) = finish([start(standalone(), root, ZIMDB_LOSE=f"1:{KILL_AT}:KILL")])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: rank 1 of 2 ended (its connection closed) at epoch 2;")
    assert "`uv run dvc repro` resumes after epoch 1, the last saved" in lines[0]
    assert not (root / MODEL).exists()  # nothing for DVC
    ((code, out, err),) = finish([start(standalone(), root)])  # the next run resumes
    assert code == 0, err[-3000:]
    assert f"resuming from {TRAIN_STATE}: epoch 1 of 3 done" in out
    assert same_model(root, uninterrupted)


def test_a_silent_worker_stops_the_others_at_the_group_timeout(tmp_path):
    """A stopped process sends nothing, as a machine gone would: the others stop at TIMEOUT.
    (torchrun then ends the stopped one: SIGTERM, and SIGKILL 30 s later; not waited for.)"""
    root = workdir(tmp_path, "node", n_train=REVIEWS, **NODE)
    proc = start(standalone(), root, ZIMDB_LOSE=f"1:{KILL_AT}:STOP")
    began, said, took = time.monotonic(), None, None
    watchdog = threading.Timer(TIMEOUT + 60, end, (proc,))  # no line: the stream ends here
    watchdog.start()
    try:
        for line in proc.stderr:
            if line.startswith("error: "):
                said, took = line.strip(), time.monotonic() - began
                break
    finally:
        watchdog.cancel()
        end(proc)
        proc.communicate()
    assert said and said.startswith(f"error: rank 1 of 2 sent nothing for {TIMEOUT} s"), said
    assert "at epoch 2;" in said
    assert took < TIMEOUT + 30, took  # start-up, an epoch and a half, then TIMEOUT
    assert not (root / MODEL).exists()


def test_a_group_of_another_size_starts_afresh_and_says_why(tmp_path, uninterrupted):
    root = workdir(tmp_path, "node", n_train=REVIEWS, **NODE)
    ((code, _, err),) = finish([start(standalone(), root, ZIMDB_LOSE=f"1:{KILL_AT}:KILL")])
    assert code != 0 and (root / TRAIN_STATE).exists()
    ((code, out, err),) = finish([start(standalone(processes=1), root)])
    assert code == 0, err[-3000:]
    assert (
        f"{TRAIN_STATE} was saved by a run of 2 process(es), this one has 1: starting afresh" in out
    )


@pytest.mark.parametrize(("processes", "lost"), [(3, 2), (3, 0), (4, 1)])
def test_in_a_larger_group_the_survivors_name_the_lost_rank(tmp_path, processes, lost):
    """Beyond two, the first survivor to see the loss calls a roll in torchrun's store, which
    outlives rank 0 (the group's own store is rank 0's), and names those that do not answer.
    A survivor may be blocked in a collective on a peer that is alive (of four, with rank 1 lost:
    rank 3), and answers from a thread of its own; one that torchrun stops (SIGTERM) answers
    before it goes."""
    root = workdir(tmp_path, "node", n_train=REVIEWS, **NODE)
    lose = f"{lost}:{8 if processes == 4 else 10}:KILL"  # 6 or 8 steps an epoch: the second
    ((code, _, err),) = finish([start(standalone(processes), root, ZIMDB_LOSE=lose)])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(
        f"error: rank {lost} of {processes} ended (its connection closed) at epoch 2"
    )


@pytest.mark.parametrize("said", ["soon", "0", "-5"])
def test_a_group_timeout_that_is_no_positive_number_is_one_line(monkeypatch, said):
    from zimdb.errors import PipelineError
    from zimdb.training import distributed

    monkeypatch.setenv("ZIMDB_GROUP_TIMEOUT", said)
    with pytest.raises(
        PipelineError, match=f"ZIMDB_GROUP_TIMEOUT must be a number of seconds > 0, got '{said}'"
    ):
        distributed._timeout()


def test_every_process_must_have_rank_0_s_params_code_and_data(monkeypatch):
    from zimdb.errors import PipelineError
    from zimdb.training import distributed

    ours = {"train.lr": 0.003, "precision": "bf16", "data/encoded/train.npy": "ab12"}
    for theirs, said in (
        (ours | {"train.lr": 0.001}, "rank 1's train.lr is 0.001, rank 0's 0.003"),
        (ours | {"precision": "fp32"}, "rank 1's precision is 'fp32', rank 0's 'bf16'"),
        (ours | {"data/encoded/train.npy": "cd34"}, "rank 1's data/encoded/train.npy differs"),
    ):
        monkeypatch.setattr(distributed, "gather", lambda group, obj, t=theirs: [ours, t])
        with pytest.raises(PipelineError, match=re.escape(said)):
            distributed.agree(distributed.Group(0, 0, 2), ours)
        with pytest.raises(SystemExit):  # a node's other processes leave the line to its first
            distributed.agree(distributed.Group(1, 1, 2), theirs)
    monkeypatch.setattr(distributed, "gather", lambda group, obj: [ours, dict(ours)])
    distributed.agree(distributed.Group(0, 0, 2), ours)
