"""The CLI's boundary: domain exceptions, OS errors and Click's usage errors become one line on stderr
and an exit code (0 ok, 1 a verdict or a failure, 2 bad input, 130 interrupted); a reader that went
away (`| head`) or a closed stdout (`>&-`) is handled here too."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from ..errors import PoetgenError, UsageError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    try:
        sys.stderr.write(f"poetgen: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return typer.Exit(code)


def handle_errors(fn):
    """Turn domain errors and OS errors into one stderr line and an exit code; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PoetgenError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(0) from None
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            raise fail(f"cannot write or read{where}: {e.strerror or e} — free some space, fix the "
                       "permissions or choose another path", 1) from None

    return wrapper


def silence_stdout() -> None:
    """The reader went away (`| head`): send what is left to /dev/null so Python's exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def write_stdout(text: str) -> bool:
    """Write to stdout; False (quietly) when the reader has gone away or stdout is closed."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        silence_stdout()
        return False
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno not in (9, None):
            raise fail(f"cannot write the output: {e.strerror}", 1) from None
        raise fail("stdout is closed: redirect it to a file or drop `>&-`", 1) from None


def emit(text: str, output: Path | None = None, inputs: tuple[Path | None, ...] = ()) -> None:
    """Send a command's output to --output (safely) or stdout."""
    if output is None:
        write_stdout(text)
        return
    from ..paths import same_file, write_output

    for path in inputs:
        if path is not None and same_file(path, output):
            raise UsageError(f"--output {output} is also an input of this command: choose another path")
    write_output(output, text)


class ClosedStream:
    """Stands in for a standard stream the shell closed (`>&-`): any write is an error we report."""

    closed = True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not text:  # rich writes "" when a capture ends: no output, no error
            return 0
        raise ValueError("I/O operation on closed file")

    def flush(self) -> None:
        pass


class OneLineErrors(TyperGroup):
    """The app's group: Click's usage errors too (no such option, a bad value, a missing option) end in
    one line on stderr and exit 2; `poetgen` alone, or a group alone, prints its help on stdout."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except KeyboardInterrupt:
            code = 130
            fail("interrupted")
        except Exception as e:  # noqa: BLE001 - Click's usage errors (no such option, bad value, missing option)
            if not hasattr(e, "format_message"):
                raise
            if type(e).__name__ == "NoArgsIsHelpError":  # `poetgen` alone, or a group alone: its help
                write_stdout(e.format_message() + "\n")
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "poetgen"
            code = getattr(e, "exit_code", 2)
            fail(f"{e.format_message()} (see `{where} -h`)", code)
        sys.exit(code if isinstance(code, int) else 0)


def run(app: typer.Typer) -> None:
    """Run the app as the `poetgen` console script (a closed stdout or stderr becomes an error we report)."""
    if sys.stdout is None:
        sys.stdout = ClosedStream()
    if sys.stderr is None:
        sys.stderr = ClosedStream()
    app(prog_name="poetgen")
