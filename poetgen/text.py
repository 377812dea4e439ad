"""Text shared by every stage: the Han test, punctuation, script conversion, and reading text files.

No torch, no numpy: `poetgen check` and argument validation import only this."""

from __future__ import annotations

import functools
import io
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CorpusError, UsageError

SCRIPTS = ("simplified", "traditional")

# Punctuation of a cleaned poem body. A verse line ends in one of LINE_END; in the regulated forms
# odd lines end in COMMA and even lines in one of STOPS.
COMMA = "，"
STOPS = "。？！"
LINE_END = COMMA + STOPS + "；：、"
ASCII_MARKS = {",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "："}  # what users type for them
PLACEHOLDERS = set("□■○●〇囗") | {chr(c) for c in range(0x2FF0, 0x2FFC)}  # lost characters in the source


def is_han(ch: str) -> bool:
    """True for a CJK unified or compatibility ideograph (all extensions), placeholders excluded."""
    c = ord(ch)
    return (
        0x4E00 <= c <= 0x9FFF
        or 0x3400 <= c <= 0x4DBF
        or 0x20000 <= c <= 0x3134F
        or 0xF900 <= c <= 0xFAFF
        or 0x2F800 <= c <= 0x2FA1F
    ) and ch not in PLACEHOLDERS


def full_width_marks(text: str) -> str:
    """ASCII , . ? ! ; : replaced by the full-width marks of a poem body."""
    return text.translate(str.maketrans(ASCII_MARKS))


@functools.cache
def converter(script: str) -> Callable[[str], str]:
    """A converter of text to `script` ('simplified': OpenCC t2s and standard glyphs, see glyphs.py;
    'traditional': unchanged, as the source has it), built once per process."""
    if script == "traditional":
        return lambda s: s
    if script != "simplified":
        raise CorpusError(f"unknown script {script!r}: use simplified or traditional")
    from .glyphs import normalizer

    return normalizer()


def to_script(text: str, script: str | None) -> str:
    """`text` in `script` (text a user gives is converted to the model's script; None leaves it)."""
    if not text or script is None:
        return text
    return converter(script)(text)


def read_text_file(path: str | os.PathLike, option: str = "--file") -> str:
    """A UTF-8 text file's contents ("-": stdin); UsageError naming `option` when it is missing, a folder,
    or not UTF-8."""
    if str(path) == "-":
        return "".join(iter_lines(None, option))
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark is not text
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path} is a folder: give a text file") from None
    except PermissionError:
        raise UsageError(f"{option} {path}: permission denied") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path} is not UTF-8 text: convert it to UTF-8") from None
    except OSError as e:
        raise UsageError(f"{option} {path} cannot be read ({e.strerror})") from None


def iter_lines(path: str | os.PathLike | None = None, option: str = "--file") -> Iterator[str]:
    """The lines of a UTF-8 file, or of stdin when `path` is None, read lazily (bounded memory);
    UsageError for a missing file, a folder, bytes that are not UTF-8, or a closed or interactive stdin."""
    if path is not None and str(path) == "-":
        path = None
    if path is not None:
        if not Path(path).exists() or Path(path).is_dir():
            read_text_file(path, option)  # raises the message for what it is instead (a pipe is read below)
        source = f"{option} {path}"
        opener = lambda: open(path, encoding="utf-8-sig")  # noqa: E731, SIM115 - a byte-order mark is not text
    else:
        stdin = sys.stdin
        if stdin is None or getattr(stdin, "closed", False):
            raise UsageError("no input and stdin is closed: give the text as an argument or with --file")
        if stdin.isatty():
            raise UsageError("no input given: pass it as an argument, with --file, or on stdin")
        source = "stdin"
        opener = lambda: io.TextIOWrapper(getattr(stdin, "buffer", stdin), encoding="utf-8-sig")  # noqa: E731
    try:
        with opener() as f:
            yield from f
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text: convert it to UTF-8") from None
    except OSError as e:
        raise UsageError(f"{source} cannot be read ({e.strerror})") from None


def plural(n: int, word: str) -> str:
    """'1 line', '2 lines', '1,000 lines'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def finite(obj):
    """`obj` with every NaN or infinite float made None, tables and lists walked: what JSON can hold
    (json.dumps would write NaN or Infinity, which no JSON parser reads)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
