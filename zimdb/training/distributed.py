"""Data-parallel training with torch.distributed, launched by torchrun.

With train.nproc_per_node > 1 the train stage relaunches itself under torchrun on this machine;
for several machines, start torchrun yourself (see the README) and the stage joins its group.

Each attempt's group gets a store of its own (attempt_store) rather than torch's own
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, whose fresh store each round is served by rank 0 and ends
with it: tried in its place at 39ca827, it held restarts (benchmarks.lost_worker --runs 20
--seed 5: 20 of 20, each model bit for bit), two nodes and rank 0 away from the rendezvous host,
but with no store outliving the workers the survivors of a lost rank could not tell one another
they were alive, and every group of three or four named the wrong ranks (tests/test_nodes.py,
test_in_a_larger_group_the_survivors_name_the_lost_rank: 3 of 3 failed).
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from zimdb.errors import PipelineError, one_line


# How long a collective waits for a process that sends nothing (a stopped process, a machine
# gone) before it fails: torch's default is 30 minutes. Every wait between collectives in a
# run (rank 0 saving the state, a first step's kernels) is seconds.
def _timeout() -> timedelta:
    said = os.environ.get("ZIMDB_GROUP_TIMEOUT", "60")
    try:
        seconds = float(said)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise PipelineError(f"ZIMDB_GROUP_TIMEOUT must be a number of seconds > 0, got {said!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    token: str = ""  # this group's own, drawn by rank 0: its keys in torchrun's store
    # torchrun's store, which its agent serves and which outlives any worker (the group's own
    # is rank 0's): where the survivors of a lost rank, rank 0 included, find one another.
    agent: dist.Store | None = field(default=None, compare=False, repr=False)
    # Set when the process leaves: its thread that answers the survivors' roll call stops.
    leaving: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writes(self) -> bool:
        """Whether this process writes its node's files: the resumable state, the model and
        the curves. Each node's first does (the replicas are identical), so a restarted group
        whose rank 0 lands on another node finds them there, and any node can `dvc commit`."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE = Group()  # a run of one process


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(module: str, nproc: int) -> int:
    """Run `python -m module` as `nproc` processes under torchrun; returns its exit code.
    torchrun restarts the group after a lost process up to PET_MAX_RESTARTS times (its
    --max-restarts, read from the environment; 0 unless set), neither a param nor in the lock."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", module]
    restarts = os.environ.get("PET_MAX_RESTARTS", "0")
    print(f"launching {nproc} processes, {restarts} restart(s): {' '.join(cmd[1:])}", flush=True)
    return subprocess.call(cmd)


def init(device_type: str, backend: str | None = None) -> Group:
    """Join torchrun's process group (`backend`, or NCCL on GPUs and gloo on CPUs), or a group
    of one."""
    if not launched_by_torchrun():
        return ONE
    group = Group(
        int(os.environ["RANK"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ["WORLD_SIZE"]),
    )
    if device_type == "cuda":
        torch.cuda.set_device(group.local_rank)
    timeout = _timeout()
    try:
        agent, store, token = attempt_store(group, timeout)
        dist.init_process_group(
            backend=backend or ("nccl" if device_type == "cuda" else "gloo"),
            store=store,
            rank=group.rank,
            world_size=group.world_size,
            timeout=timeout,
        )
    except (RuntimeError, OSError) as e:  # DistError is a RuntimeError
        raise PipelineError(
            f"rank {group.rank} of {group.world_size} could not join its group within "
            f"{timeout.total_seconds():g} s (ZIMDB_GROUP_TIMEOUT), a process of it lost or "
            f"never started: {one_line(str(e), 120)}"
        ) from None
    group = replace(group, token=token, agent=agent)
    if group.enabled:
        threading.Thread(
            target=_answer_when_called, args=(group, group.leaving), daemon=True
        ).start()
    return group


def attempt_store(group: Group, timeout: timedelta) -> tuple[dist.Store, dist.Store, str]:
    """torchrun's store, a store of this attempt's own for the group, and the token that names
    the attempt.

    torchrun's agent keeps one store for the whole run (MASTER_ADDR:MASTER_PORT): after a
    restart, the keys of the group it lost are still there, and a restarted process could
    read a dead process's address and fail to connect (gloo: `Connection refused`) or meet
    another's old counts and hang. Rank 0 serves a new store on a free port and posts where,
    with a fresh token, in the agent's; the others connect to the store the post names, and
    take it only once it holds the same token (a post left by the lost group names a store
    that is gone). Rank 0 need not be on the agent's machine: it posts its own address, the one
    it reaches the agent from. Raises DistError where none comes within `timeout`."""
    agent_host, agent_port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(agent_host, agent_port, is_master=False, timeout=timeout)
    if group.rank == 0:
        with socket.create_connection((agent_host, agent_port), timeout=10) as probe:
            host = probe.getsockname()[0]
        token = secrets.token_hex(8)
        own = dist.TCPStore(
            host, 0, group.world_size, is_master=True, timeout=timeout, wait_for_workers=False
        )
        own.set("zimdb/token", token)
        agent.set("zimdb/store", f"{host} {own.port} {token}")
        return agent, own, token
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        if agent.check(["zimdb/store"]):
            host, posted_port, token = agent.get("zimdb/store").decode().split()
            # A post of the lost group's names a port nobody serves now: a plain connection
            # says so at once, where a TCPStore client would retry it for seconds.
            if serving(host, int(posted_port)):
                try:
                    own = dist.TCPStore(
                        host, int(posted_port), is_master=False, timeout=timedelta(seconds=5)
                    )
                    if own.get("zimdb/token").decode() == token:
                        own.set_timeout(timeout)
                        return agent, own, token
                except (RuntimeError, OSError):
                    pass  # its server went as we came, or the port is another's now
        time.sleep(0.1)
    raise dist.DistError("rank 0 posted no store for this attempt")


def serving(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class Stopped(BaseException):
    """torchrun's SIGTERM while training: its agent stops this node's processes (one of them
    lost, a restart, a shutdown). A BaseException, as KeyboardInterrupt is, so that no
    library's `except Exception` holds the process back."""


_stopping = False  # once set, this process is on its way out: a SIGTERM changes nothing


def _stop(*_) -> None:
    global _stopping
    if not _stopping:
        _stopping = True
        raise Stopped


@contextlib.contextmanager
def stoppable(group: Group):
    """Within, torchrun's SIGTERM raises Stopped instead of ending the process at once: a
    process its agent stops then says it is alive (lost() below) before it goes, and is not
    taken for the lost one by the others."""
    if not group.enabled:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lost(group: Group, error: BaseException, epoch: int, done: int) -> BaseException:
    """What each process of a group whose collective failed, or whose agent stopped it, ends
    with (`error`, in `epoch`, `done` epochs saved): one of them, a PipelineError of one line
    naming the rank(s) lost and how; the others, a quiet exit."""
    global _stopping
    _stopping = True  # torchrun's SIGTERM, now or later, waits for the line (GRACE at most)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group.leaving.set()
    said = str(error).lower()
    how = (
        f"sent nothing for {_timeout().total_seconds():g} s (a stopped process, or a machine gone)"
        if "timed out" in said or "timeout" in said
        else "ended (its connection closed)"
    )
    reports, alive = answering(group)
    if not reports:
        return SystemExit(2)
    gone = [r for r in range(group.world_size) if r not in alive]
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0))
    then = (
        f"torchrun restarts it (restart {restart + 1} of {restarts} on this node)"
        if restart < restarts
        else "nothing was written for DVC, and `uv run dvc repro` "
        + (f"resumes after epoch {done}, the last saved" if done else "starts afresh")
    )
    when = f"at epoch {epoch}" if epoch else "as the run began"
    if not gone:  # every process answered: torchrun stopped a whole group that lost none
        return PipelineError(f"torchrun stopped the group {when}; {then}")
    ranks = "rank" + ("s " if len(gone) > 1 else " ") + ", ".join(map(str, gone))
    why = "torchrun's SIGTERM" if isinstance(error, Stopped) else one_line(str(error), 80)
    return PipelineError(
        f"{ranks} of {group.world_size} {how} {when}; the group stops, and {then} ({why})"
    )


def broke(error: BaseException) -> bool:
    """Whether `error` is a collective's failure (a peer's closed connection, a timeout), or
    torchrun stopping this process: torch raises DistError for NCCL's failures, and gloo's
    transport a plain RuntimeError that names gloo."""
    return isinstance(error, dist.DistError | Stopped) or (
        isinstance(error, RuntimeError) and "/gloo/" in str(error)
    )


GRACE = 5.0  # seconds the process that reports waits to hear from the other survivors


def _keys(group: Group) -> tuple[str, list[str]]:
    """The keys of the survivors' roll call in torchrun's store: the first to report adds to
    the first, and each survivor sets its own of the others."""
    roll = f"zimdb/{group.token}/alive"
    return f"{roll}/reporter", [f"{roll}/{r}" for r in range(group.world_size)]


def _answer_when_called(group: Group, stop: threading.Event) -> None:
    """Sets this rank's key once the roll is called, whatever the main thread is doing: one
    blocked in a collective on a peer that is still alive cannot answer, and would be taken
    for lost. A client of its own: the main thread's is not shared between threads."""
    called, keys = _keys(group)
    try:
        agent = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False
        )
        while not stop.wait(0.05):
            if agent.check([called]):
                agent.set(keys[group.rank], "1")
                return
    except (RuntimeError, OSError):  # the agent gone: nobody left to answer
        pass


def answering(group: Group) -> tuple[bool, set[int]]:
    """Whether this process reports the loss, and the ranks known to be alive.

    The first survivor to get here calls the roll in torchrun's store, which outlives any
    worker (the group's own store is rank 0's), and reports: one line, whichever survivor saw
    the failure first and however late the others see it. Every live process answers from a
    thread of its own (_answer_when_called), a lost one never: the report waits for them up to
    GRACE, or until every rank has answered. The others leave at once. Where the store is gone
    too (the agent's machine), each survivor knows only of itself, and says so."""
    if group.agent is None:
        return True, {group.rank}
    called, keys = _keys(group)
    try:
        group.agent.set(keys[group.rank], "1")
        if group.agent.add(called, 1) > 1:
            return False, set()
        alive, deadline = {group.rank}, time.monotonic() + GRACE
        while len(alive) < group.world_size and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = {r for r, key in enumerate(keys) if group.agent.check([key])}
        return True, alive | {group.rank}
    except (RuntimeError, OSError):
        return True, {group.rank}


def agree(group: Group, inputs: dict[str, object]) -> None:
    """Refuse to train unless every process has rank 0's `inputs` (its train params, device,
    precision and the digest of each file it reads): every node reads its own working copy."""
    everyone = gather(group, inputs)
    for rank, theirs in enumerate(everyone[1:], 1):
        for key, ours in everyone[0].items():
            if theirs.get(key) != ours:
                what = (
                    f"{key} differs from rank 0's"
                    if "/" in key
                    else f"{key} is {theirs.get(key)!r}, rank 0's {ours!r}"
                )
                if not group.writes:  # a line on each node, from its first process
                    raise SystemExit(2)
                raise PipelineError(
                    f"rank {rank}'s {what}: every node needs the same params.yaml, code and data "
                    "(compare `git status` and `dvc status` on each)"
                )


def shard(batches: list, group: Group) -> list:
    """This process's share of an epoch's batches: every world_size-th one, from its rank on.

    The epoch order is reshuffled every epoch, so each process sees a different shard each time;
    the few batches left over are dropped so every process makes the same number of steps.
    """
    usable = len(batches) - len(batches) % group.world_size
    return batches[group.rank : usable : group.world_size]


def all_sum(group: Group, values: torch.Tensor) -> torch.Tensor:
    """`values` summed over all processes (unchanged in a group of one). One tensor, made on the
    run's device: NCCL reduces nothing else, and one reduction is one wait."""
    if group.enabled:
        dist.all_reduce(values)
    return values


def broadcast(group: Group, obj, device: torch.device | None):
    """Rank 0's `obj` in every process (itself in a group of one)."""
    if not group.enabled:
        return obj
    shared = [obj]
    cuda = device is not None and device.type == "cuda"
    dist.broadcast_object_list(shared, src=0, device=device if cuda else None)
    return shared[0]


def gather(group: Group, obj) -> list:
    """Every process's `obj` in rank order (on every rank; a list of one in a group of one)."""
    if not group.enabled:
        return [obj]
    gathered = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown(group: Group) -> None:
    group.leaving.set()
    if dist.is_initialized():  # torchrun with one process starts a group too
        # Together: a process that tore its group down while rank 0 still saved the model was
        # seen to abort at exit (SIGABRT, "terminate called without an active exception") in
        # restarted groups, failing a run whose outputs were written.
        with contextlib.suppress(RuntimeError):  # a peer gone after the run's end changes nothing
            dist.barrier()
        dist.destroy_process_group()
