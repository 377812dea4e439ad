"""The poetgen command line: the Typer app (app.py), shared options (options.py), one module per command
group (commands/), rendering (render.py), progress (progress.py) and the error boundary (errors.py).

The work is done by the library; defaults come from its dataclasses (config.py). Heavy modules
(torch, numpy, opencc) are imported inside the commands, after the arguments are checked, so
`poetgen --help`, `check` and argument errors stay fast."""

import os
import signal
import sys
import threading
import time

from . import commands  # noqa: F401 - registers the commands on the app
from .app import app
from .errors import fail, is_committed, run


def main(interrupted=None) -> None:
    """What the `poetgen` command runs (poetgen.__main__): usage errors too end in one line on stderr. Idle
    OpenMP threads sleep rather than spin (OMP_WAIT_POLICY=PASSIVE unless set): a spinning pool takes
    the cores a training run or a second poetgen needs. Set before torch loads, which reads it once.
    SIGINT raises KeyboardInterrupt (exit 130; train saves first) whatever the process inherited: a
    background job of a shell script starts with SIGINT ignored, and `kill -INT` would be lost (an
    export would finish and replace its output); it waits out torch's import, and it is ignored once
    the command's work is in place (errors.committed). `interrupted()`: whether a SIGINT came while
    the commands loaded (held by poetgen.__main__): then nothing runs, exit 130."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    signal.signal(signal.SIGINT, _interrupt)
    if interrupted is not None and interrupted():
        fail("interrupted", 130)
        sys.exit(130)
    run(app)


def _importing(name: str) -> bool:
    """Whether the package `name` or a module of it is being imported right now (its code still
    running): torch imports some of its modules lazily, at first use, after its own import."""
    for module_name, module in list(sys.modules.items()):
        if module_name == name or module_name.startswith(name + "."):
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


def _interrupt(signum, frame) -> None:
    """SIGINT: KeyboardInterrupt, except inside torch's import, where an exception thrown through its
    C++ bindings aborts the process (or leaves it to die by the signal after our message): there the
    interrupt waits until the import is done, then comes again."""
    if is_committed():  # the work is done: nothing to stop
        return
    if not _importing("torch"):
        raise KeyboardInterrupt

    def later() -> None:
        while _importing("torch"):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=later, daemon=True).start()


__all__ = ["app", "main"]
