"""Imported by every Python process whose sys.path holds this folder (the tests put it first on
PYTHONPATH for the torchrun workers they start). With ZIMDB_LOSE="RANK:STEP:SIGNAL" set, that
rank sends itself SIGNAL (KILL or STOP) at that optimizer step of its first life
(TORCHELASTIC_RESTART_COUNT 0): a test loses a worker mid-epoch at a known point, without racing
it, and the restarted group does not lose it again. With ZIMDB_LATE="RANK:SECONDS", that rank
starts SECONDS late in its second life, so the others meet the lost group's leftovers first."""

import os
import signal

_spec = os.environ.get("ZIMDB_LOSE", "")
if _spec and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    _rank, _step, _signal = _spec.split(":")
    if os.environ.get("RANK") == _rank:
        from zimdb.training import step as _module

        _real, _taken = _module.Stepper.step, []

        def _step_then_lose(self, window):
            _taken.append(1)
            if len(_taken) == int(_step):
                os.kill(os.getpid(), getattr(signal, f"SIG{_signal}"))
            return _real(self, window)

        _module.Stepper.step = _step_then_lose

_late = os.environ.get("ZIMDB_LATE", "")
if _late and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "1":
    _rank, _seconds = _late.split(":")
    if os.environ.get("RANK") == _rank:
        import time

        time.sleep(float(_seconds))
