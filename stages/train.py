"""Stage train: SentimentLSTM on the train split; the epoch with the best val accuracy is kept.

The run (zimdb.training.run) computes in train.precision (fp16 autocast with GradScaler on CUDA,
bf16 on CPUs with native bf16), accumulates gradients over train.grad_accum_steps micro-batches
and clips them unscaled; gradient checkpointing where memory asks for it. A resumable state is
saved after every epoch, and the run is data-parallel when train.nproc_per_node > 1 or when
started by torchrun. Writes data/model.pt and the curves under dvclive/train.
"""

import numpy as np
from dvclive import Live

from zimdb import errors, params
from zimdb.imports import ROOT, project_files
from zimdb.model.file import ModelFile
from zimdb.paths import ENCODING, MODEL, TRAIN_LIVE
from zimdb.training import distributed
from zimdb.training.run import TRAINED_ON, Run, epoch, start
from zimdb.training.state import TrainState, fingerprint, identity


def main() -> None:
    p = params.load("train")
    run, train, val, encoding = start(p, relaunch_as="stages.train")
    group, state, number = run.group, None, 0
    try:
        with distributed.stoppable(group):
            state = resumed(p, run)
            live = None
            if group.writes:  # on every node: its own copy of the curves
                live = Live(str(TRAIN_LIVE), dvcyaml=None, save_dvc_exp=False)
                for number, logged in enumerate(state.history, 1):  # DVC cleared them: replay
                    log(live, number, logged, p.epochs, quiet=True)
            for number in range(state.epoch + 1, p.epochs + 1):
                state.end_epoch(epoch(run, train, val, state.rng, number))
                if group.writes:
                    log(live, number, state.history[-1], p.epochs, quiet=not group.is_main)
                state.save(group)
    except (RuntimeError, distributed.Stopped) as e:  # a process lost: a line, nothing for DVC
        if not distributed.broke(e):
            raise
        raise distributed.lost(group, e, number, state.epoch if state else 0) from None

    if group.writes:
        # What `dvc metrics show` lists: the run's headline. Its epochs are the curves in plots/.
        live.summary = {"step": live.summary["step"], **headline(state)}
        live.end()
        run.model.load_state_dict(state.best_weights)
        ModelFile(run.model, encoding, run.precision.name).save(MODEL)
        if group.is_main:
            print(f"saved {MODEL}: epoch {state.best_epoch}, val accuracy {state.best_acc:.4f}")
    distributed.shutdown(group)


def resumed(p: params.Train, run: Run) -> TrainState:
    """The run's state: continued from the saved one where that was made of the same (rank 0
    decides), once every process has shown it runs the same params, code and data."""
    # The code that shapes training is an input too: a state saved by another model, loop or
    # state layout may not fit, or may not mean the same.
    files = {str(f): f for f in (ENCODING, *TRAINED_ON)}
    files |= {str(f): ROOT / f for f in project_files("stages.train")}
    made_of = identity(p, files, run.device.type, run.precision.name)
    distributed.agree(run.group, made_of)
    state = TrainState(
        run.stepper,
        run.model,
        np.random.default_rng(p.seed),
        fingerprint(made_of, run.group.world_size),
    )
    state.restore(p.epochs, run.device, run.group)
    return state


def headline(state: TrainState) -> dict:
    """The best epoch, its val accuracy, and the run's training speed over all its epochs."""
    seconds = sum(e["epoch_time_s"] for e in state.history)
    samples = sum(e["samples_per_s"] * e["epoch_time_s"] for e in state.history)
    return {
        "best_epoch": state.best_epoch,
        "val_acc": state.best_acc,
        "samples_per_s": samples / seconds,
    }


def log(live: Live, number: int, metrics: dict, epochs: int, quiet: bool = False) -> None:
    """The epoch's line on stdout and its metrics in dvclive, whose step is the epoch number
    (from 1: the plots' x axis)."""
    if not quiet:
        print(
            f"epoch {number}/{epochs}: train loss {metrics['train/loss']:.4f} "
            f"acc {metrics['train/acc']:.4f} | val loss {metrics['val/loss']:.4f} "
            f"acc {metrics['val/acc']:.4f} | {metrics['epoch_time_s']:.1f} s, "
            f"{metrics['samples_per_s']:.0f} samples/s, {metrics['gflops']:.0f} GFLOP/s"
            + (f" ({metrics['utilisation']:.0%} of peak)" if "utilisation" in metrics else "")
        )
    live.step = number
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


if __name__ == "__main__":
    errors.run(main)
