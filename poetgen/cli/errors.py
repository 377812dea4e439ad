"""The CLI's boundary: domain exceptions, OS errors and Click's usage errors become one line on stderr
and an exit code (0 ok, 1 a verdict or a failure, 2 bad input, 130 interrupted); a reader that went
away (`| head`) or a closed stdout (`>&-`) is handled here too."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path

import typer
from typer.core import TyperGroup

from ..errors import PoetgenError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise. A stop the user asked for (Ctrl-C,
    exit 130) is not an error and is not called one, and no later SIGINT cuts the way out short (Python
    dies by the signal, exit -2, when a second KeyboardInterrupt escapes, even from an exit handler)."""
    global _stopped
    label = "" if code == 130 else "error: "
    if code == 130:
        _stopped = True
        ignore_interrupts()
    try:
        sys.stderr.write(f"poetgen: {label}{' '.join(message.split())}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return typer.Exit(code)


_committed = False  # the command's work is in place: see committed()
_stopped = False  # the user's stop was said (exit 130): see fail()


def committed() -> None:
    """Say that the command's work is in place (an output written whole): from then on SIGINT changes
    nothing, and the command ends as it would have (an export that wrote its file exits 0, not 130)."""
    global _committed
    _committed = True


def is_committed() -> bool:
    return _committed


def interrupted() -> typer.Exit:
    """Ctrl-C was caught: say so, exit 130."""
    return fail("interrupted", 130)


def ignore_interrupts() -> None:
    """From now on SIGINT is ignored: the command is on its way out (from the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def handle_errors(fn):
    """Turn domain errors and OS errors into one stderr line and an exit code; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PoetgenError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise interrupted() from None
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


def emit(text: str, output: Path | None = None) -> None:
    """Send a command's output to --output (safely) or stdout."""
    if output is None:
        write_stdout(text)
        return
    from ..paths import write_output

    links = write_output(output, text)
    if links:
        typer.echo(f"poetgen: warning: {output} had {links} other hard link{'s' if links > 1 else ''}; "
                   f"{'they keep' if links > 1 else 'it keeps'} the old text (the output replaces the file whole)",
                   err=True)


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
            interrupted()
        except BrokenPipeError:
            silence_stdout()
            code = 0
        except (OSError, ValueError) as e:  # help or version text that stdout cannot take; a read-only HOME
            if isinstance(e, ValueError) and "closed file" not in str(e):
                raise
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "stdout is closed"
            code = 1
            if isinstance(e, OSError) and e.filename:  # a file of ours (a shell's completion script)
                fail(f"cannot write {e.filename} ({reason}): fix the permissions, or free some space")
            else:
                fail(f"cannot write the output ({reason}): redirect it to a file that can take it")
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
        if code == 130 and not _stopped:  # Click's own answer to a Ctrl-C while it reads the arguments
            interrupted()
        sys.exit(code if isinstance(code, int) else 0)


def utf8_streams() -> None:
    """Poems are UTF-8 text: standard streams that cannot carry Chinese (a C or POSIX locale,
    PYTHONIOENCODING=ascii) are made UTF-8 rather than failing at the first character."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if encoding and hasattr(stream, "reconfigure"):
            try:
                "汉《》".encode(encoding)
            except (UnicodeEncodeError, LookupError):
                stream.reconfigure(encoding="utf-8")


def utf8_arguments(args: list[str]) -> list[str]:
    """The arguments as UTF-8 text (under a non-UTF-8 locale Python decodes them otherwise); an argument
    that is not UTF-8 at all ends the run: one line on stderr, exit 2."""
    out = []
    for i, arg in enumerate(args, 1):
        try:
            out.append(os.fsencode(arg).decode("utf-8"))
        except UnicodeDecodeError:
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            fail(f"argument {i} ({shown[:40]}) is not UTF-8 text: pass the text in UTF-8", 2)
            sys.exit(2)
    return out


def run(app: typer.Typer) -> None:
    """Run the app as the `poetgen` console script: UTF-8 in and out whatever the locale; a closed
    stdout or stderr, or one that cannot take what is written (a full disk), becomes an error we report."""
    if sys.stdout is None:
        sys.stdout = ClosedStream()
    if sys.stderr is None:  # `2>&-`: progress and warnings go nowhere; the work and its exit code stand
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    utf8_streams()
    code: int | str | None = 0
    try:
        app(args=utf8_arguments(sys.argv[1:]), prog_name="poetgen")
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # while the commands are being set up, before any handler of ours runs
        interrupted()
        code = 130
    ignore_interrupts()  # the command is over: a SIGINT now (in an exit handler) would end in a traceback
    if code == 130:
        # A KeyboardInterrupt raised inside eval() of a string (Typer evaluates annotations so, while the
        # commands are set up) marks it unhandled for good in CPython, which then ends the process by
        # SIGINT (exit -2) whatever we caught and returned; a string evaluated afterwards clears the mark.
        eval("None")  # noqa: S307 - a constant
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    except (OSError, ValueError) as e:  # what was left in the buffer could not be written
        silence_stdout()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "stdout is closed"
        fail(f"cannot write the output ({reason}): redirect it to a file that can take it", 1)
        code = code or 1
    sys.exit(code)
