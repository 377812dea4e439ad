"""Poem forms (五绝 七绝 五律 七律): detection, line splitting, and the masks of constrained decoding."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError
from .text import COMMA, LINE_END, STOPS, plural

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


def detect(body: str) -> Form | None:
    """The regulated form of a body, or None.

    A regulated form needs 4 or 8 lines of 5 or 7 characters, commas after odd lines and
    full stops (。？！) after even lines."""
    lines = split_lines(body)
    if len(lines) not in (4, 8) or len({len(line) for line in lines}) != 1:
        return None
    for i, line in enumerate(lines):
        mark = line[-1]
        if (i % 2 == 0 and mark != COMMA) or (i % 2 == 1 and mark not in STOPS):
            return None
    for form in FORMS.values():
        if form.chars == len(lines[0]) - 1 and form.lines == len(lines):
            return form
    return None


def detect_form(body: str) -> str:
    """The Chinese name of the body's form (五绝/七绝/五律/七律), or 'other'."""
    form = detect(body)
    return form.name if form else "other"


# ---------------------------------------------------------------------------------------------
# Constrained decoding: which tokens may come next


class Rule:
    """Names of the token classes a step may draw from (each becomes a vocabulary mask)."""

    HAN = "han"  # a character
    HAN_OR_MARK = "han_or_mark"  # a character or any punctuation mark (free form)
    HAN_OR_STOP = "han_or_stop"  # a character or a sentence-final mark
    HAN_OR_EOS = "han_or_eos"  # another line, or the end of the poem
    COMMA = "comma"
    STOP = "stop"
    EOS = "eos"


RULES = (Rule.HAN, Rule.HAN_OR_MARK, Rule.HAN_OR_STOP, Rule.HAN_OR_EOS, Rule.COMMA, Rule.STOP, Rule.EOS)


class BodyConstraint:
    """The grammar of one poem body: fixed form or free, acrostic heads, a character budget.

    `rule()` gives (rule, forced character or None) for the next position; `advance(ch)` moves on
    (ch is '' for the end of the poem). Every poem this admits is well formed by construction."""

    def __init__(self, form: Form | None = None, heads: str = "", max_chars: int = 200):
        self.form = form
        self.heads = heads
        self.max_chars = max_chars
        self.line = 0  # index of the current line
        self.col = 0  # characters written in the current line, its mark excluded
        self.chars = 0  # body characters written, marks included
        self.last = ""
        self.done = False

    @property
    def lines(self) -> int | None:
        if self.form is not None:
            return self.form.lines
        return len(self.heads) or None

    def rule(self) -> tuple[str, str | None]:
        if self.done:
            return Rule.EOS, None
        head = self.heads[self.line] if self.col == 0 and self.line < len(self.heads) else None
        form = self.form
        if form is not None:
            if self.line >= form.lines:
                return Rule.EOS, None
            if self.col < form.chars:
                return Rule.HAN, head
            return (Rule.COMMA if self.line % 2 == 0 else Rule.STOP), None
        # free form
        if self.lines is not None and self.line >= self.lines:
            return Rule.EOS, None
        if self.col == 0:
            if self.last and self.last in STOPS and not self.heads:
                return (Rule.EOS if self.chars >= self.max_chars else Rule.HAN_OR_EOS), None
            return Rule.HAN, head
        last_line = self.lines is not None and self.line == self.lines - 1
        if self.chars >= self.max_chars or (last_line and self.col >= 2 * 7):
            return Rule.STOP, None
        return (Rule.HAN_OR_STOP if last_line else Rule.HAN_OR_MARK), None

    def allows(self, ch: str) -> bool:
        rule, forced = self.rule()
        if forced is not None:
            return ch == forced
        if rule == Rule.HAN:
            return ch not in LINE_END
        if rule == Rule.COMMA:
            return ch == COMMA
        if rule == Rule.STOP:
            return ch in STOPS
        if rule == Rule.HAN_OR_STOP:
            return ch in STOPS or ch not in LINE_END
        if rule in (Rule.HAN_OR_MARK, Rule.HAN_OR_EOS):
            return True if rule == Rule.HAN_OR_MARK else ch not in LINE_END
        return False

    def advance(self, ch: str) -> None:
        if ch == "":
            self.done = True
            return
        self.chars += 1
        self.last = ch
        if ch in LINE_END:
            self.line += 1
            self.col = 0
        else:
            self.col += 1


def check_heads(heads: str, form: Form | None) -> None:
    """Raise UsageError when acrostic heads cannot start the lines of `form`."""
    bad = [c for c in heads if c in LINE_END or c.isspace() or c.isascii()]
    if bad:
        raise UsageError(f"--acrostic takes characters only, not {''.join(dict.fromkeys(bad))!r}")
    if form is not None and len(heads) != form.lines:
        raise UsageError(f"--acrostic has {plural(len(heads), 'head')} but a {form.name} has {form.lines} lines: "
                         f"give {form.lines} characters")


def check_prompt(prompt: str, constraint_factory) -> None:
    """Raise UsageError naming the first character of `prompt` that the form does not allow there."""
    c = constraint_factory()
    for i, ch in enumerate(prompt):
        rule, forced = c.rule()
        if rule == Rule.EOS:
            raise UsageError(f"--prompt is longer than the poem ({plural(i, 'character')} fit): shorten it")
        if not c.allows(ch):
            want = f"the acrostic head {forced!r}" if forced else {
                Rule.HAN: "a character", Rule.COMMA: "'，'", Rule.STOP: "'。', '？' or '！'",
            }.get(rule, "a character or mark")
            raise UsageError(f"--prompt does not fit: position {i + 1} is {ch!r} where {want} must stand")
        c.advance(ch)
