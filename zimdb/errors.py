"""How a stage reports a mistake the user can fix: one line on stderr, exit 2, no traceback."""

import os
import signal
import sys
import threading
from collections.abc import Callable


class PipelineError(Exception):
    """Bad params, bad input data or a missing/damaged artifact; the message names the culprit."""


def one_line(text: str, limit: int = 200) -> str:
    """Another library's message, fit to end one of ours: one line, at most `limit` long."""
    return " ".join(text.split())[:limit]


def _pass_on_interrupts(unraisable) -> None:
    """Ctrl-C that lands inside a finaliser (__del__, a weakref callback) cannot propagate from
    there: CPython would print it and carry on, and the user's Ctrl-C would be lost. SIGINT is
    sent again a moment later, from a timer thread, once this hook has returned (raised inside
    it, the interrupt would be lost the same way); should it land in a finaliser again, it
    comes back here."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
    else:
        sys.__unraisablehook__(unraisable)


def _quiet_half_built_progress_bars(unraisable) -> None:
    if not getattr(unraisable.object, "__module__", "").startswith("tqdm"):
        sys.__unraisablehook__(unraisable)


def run(main: Callable[[], None]) -> None:
    sys.unraisablehook = _pass_on_interrupts
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C can land inside a constructor (a progress bar's, each epoch): the half-built
        # bar's finaliser then fails as the interrupt unwinds, a traceback of no use to anyone.
        # Any other finaliser's failure is still reported.
        sys.unraisablehook = _quiet_half_built_progress_bars
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
