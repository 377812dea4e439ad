"""The poetgen command line: the Typer app (app.py), shared options (options.py), one module per command
group (commands/), rendering (render.py), progress (progress.py) and the error boundary (errors.py).

The work is done by the library; defaults come from its dataclasses (config.py). Heavy modules
(torch, numpy, opencc) are imported inside the commands, after the arguments are checked, so
`poetgen --help`, `check` and argument errors stay fast."""

import os
import signal

from . import commands  # noqa: F401 - registers the commands on the app
from .app import app
from .errors import run


def main() -> None:
    """Entry point of the `poetgen` console script: usage errors too end in one line on stderr. Idle
    OpenMP threads sleep rather than spin (OMP_WAIT_POLICY=PASSIVE unless set): a spinning pool takes
    the cores a training run or a second poetgen needs. Set before torch loads, which reads it once.
    A background job of a shell script starts with SIGINT ignored, and Python then never raises
    KeyboardInterrupt: `kill -INT` would be lost and an export would finish and replace its output.
    SIGINT is restored, so every command stops on it with exit 130 (train saves first)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    run(app)


__all__ = ["app", "main"]
