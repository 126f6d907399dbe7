"""How a stage reports a mistake the user can fix: one line on stderr, exit 2, no traceback."""

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad params, bad input data or a missing/damaged artifact; the message names the culprit."""


def one_line(text: str, limit: int = 200) -> str:
    """Another library's message, fit to end one of ours: one line, at most `limit` long."""
    return " ".join(text.split())[:limit]


def _quiet_half_built_progress_bars(unraisable) -> None:
    if not getattr(unraisable.object, "__module__", "").startswith("tqdm"):
        sys.__unraisablehook__(unraisable)


def run(main: Callable[[], None]) -> None:
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
