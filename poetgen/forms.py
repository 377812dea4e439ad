"""Poem forms (五绝 七绝 五律 七律): detection, line splitting, and the masks of constrained decoding."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

COMMA = "，"
STOPS = "。？！"
LINE_END = COMMA + STOPS + "；：、"
_LINE_RE = re.compile(f"[^{LINE_END}]+[{LINE_END}]?")


@dataclass(frozen=True)
class Form:
    """A fixed poem form: `lines` lines of `chars` characters each."""

    key: str
    name: str
    chars: int
    lines: int


FORMS = {
    "wujue": Form("wujue", "五绝", 5, 4),
    "qijue": Form("qijue", "七绝", 7, 4),
    "wulv": Form("wulv", "五律", 5, 8),
    "qilv": Form("qilv", "七律", 7, 8),
}
_ALIASES = {f.name: f.key for f in FORMS.values()} | {"五絕": "wujue", "七絕": "qijue"}
_ALIASES |= {"五律": "wulv", "七律": "qilv"}


def get_form(name: str) -> Form | None:
    """The form named `name` (pinyin key or Chinese name); None for 'free'. Raises UsageError."""
    key = _ALIASES.get(name.strip(), name.strip().lower())
    if key == "free":
        return None
    if key not in FORMS:
        choices = ", ".join(["free", *FORMS, *(f.name for f in FORMS.values())])
        raise UsageError(f"unknown form {name!r}: choose one of {choices}")
    return FORMS[key]


def split_lines(body: str) -> list[str]:
    """Split a poem body into lines, each keeping its closing punctuation mark."""
    return [m.group(0) for m in _LINE_RE.finditer(body)]


def detect_form(body: str) -> str:
    """The Chinese name of the body's form (五绝/七绝/五律/七律), or 'other'.

    A regulated form needs 4 or 8 lines of 5 or 7 characters, commas after odd lines and
    full stops (。？！) after even lines."""
    lines = split_lines(body)
    if len(lines) not in (4, 8):
        return "other"
    lengths = {len(line) - 1 for line in lines}
    if len(lengths) != 1 or lengths.pop() not in (5, 7):
        return "other"
    for i, line in enumerate(lines):
        mark = line[-1]
        if (i % 2 == 0 and mark != COMMA) or (i % 2 == 1 and mark not in STOPS):
            return "other"
    chars = len(lines[0]) - 1
    for form in FORMS.values():
        if form.chars == chars and form.lines == len(lines):
            return form.name
    return "other"
