"""Poem forms (五绝 七绝 五律 七律): detection, line splitting, and the grammar of a body that
constrained decoding follows: which class of token may come next."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError
from .text import COMMA, LINE_END, STOPS, plural

ATTESTED_DOUBLE = 5  # a fixed form writes a 叠字 (萧萧) only where the train split holds the pair this often

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
# Constrained decoding: which class of token may come next


class TokenClass:
    """Names of the classes of token a step may draw from (masks.token_class_masks makes each a
    vocabulary mask)."""

    HAN = "han"  # a character
    HAN_OR_MARK = "han_or_mark"  # a character or any punctuation mark (free form)
    HAN_OR_STOP = "han_or_stop"  # a character or a sentence-final mark
    HAN_OR_EOS = "han_or_eos"  # another line, or the end of the poem
    COMMA = "comma"
    STOP = "stop"
    EOS = "eos"


TOKEN_CLASSES = (TokenClass.HAN, TokenClass.HAN_OR_MARK, TokenClass.HAN_OR_STOP, TokenClass.HAN_OR_EOS,
                 TokenClass.COMMA, TokenClass.STOP, TokenClass.EOS)


class BodyGrammar:
    """The grammar of one poem body: fixed form or free, acrostic heads, a character budget.

    `expect()` gives (token class, forced character or None) for the next position; `advance(ch)`
    moves on (ch is '' for the end of the poem). Every poem this admits is well formed by construction."""

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

    def expect(self) -> tuple[str, str | None]:
        """The class of token the next position takes, and the acrostic head that must stand there."""
        if self.done:
            return TokenClass.EOS, None
        head = self.heads[self.line] if self.col == 0 and self.line < len(self.heads) else None
        form = self.form
        if form is not None:
            if self.line >= form.lines:
                return TokenClass.EOS, None
            if self.col < form.chars:
                return TokenClass.HAN, head
            return (TokenClass.COMMA if self.line % 2 == 0 else TokenClass.STOP), None
        # free form
        if self.lines is not None and self.line >= self.lines:
            return TokenClass.EOS, None
        if self.col == 0:
            if self.last and self.last in STOPS and not self.heads:
                return (TokenClass.EOS if self.chars >= self.max_chars - 1 else TokenClass.HAN_OR_EOS), None
            return TokenClass.HAN, head
        last_line = self.lines is not None and self.line == self.lines - 1
        budget = self.max_chars - 2 * max(0, len(self.heads) - self.line - 1)  # later heads: a head and a mark each
        if self.chars >= budget - 1 or (last_line and self.col >= 2 * 7):  # the mark is the last
            return TokenClass.STOP, None
        # a ， needs a character and a stop after it: none where they would not fit in max_chars
        no_comma = last_line or self.chars >= budget - 2
        return (TokenClass.HAN_OR_STOP if no_comma else TokenClass.HAN_OR_MARK), None

    def allows(self, ch: str) -> bool:
        """Whether `ch` may stand at the next position."""
        token_class, forced = self.expect()
        if forced is not None:
            return ch == forced
        if token_class == TokenClass.HAN:
            return ch not in LINE_END
        if token_class == TokenClass.COMMA:
            return ch == COMMA
        if token_class == TokenClass.STOP:
            return ch in STOPS
        if token_class == TokenClass.HAN_OR_STOP:
            return ch in STOPS or ch not in LINE_END
        if token_class in (TokenClass.HAN_OR_MARK, TokenClass.HAN_OR_EOS):
            return True if token_class == TokenClass.HAN_OR_MARK else ch not in LINE_END
        return False

    def advance(self, ch: str) -> None:
        """Move past `ch` ('' ends the poem)."""
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


def check_prompt(prompt: str, grammar: BodyGrammar) -> None:
    """Raise UsageError naming the first character of `prompt` that the body's grammar does not allow
    there (`grammar` is used up)."""
    bad = [c for c in prompt if c.isspace() or (c.isascii() and c.isalnum())]
    if bad:
        raise UsageError(f"--prompt takes Chinese characters (and the marks ，。？！), not "
                         f"{''.join(dict.fromkeys(bad))!r}")
    for i, ch in enumerate(prompt):
        token_class, forced = grammar.expect()
        if token_class == TokenClass.EOS:
            raise UsageError(f"--prompt is longer than the poem ({plural(i, 'character')} fit): shorten it")
        if not grammar.allows(ch):
            want = f"the acrostic head {forced!r}" if forced else {
                TokenClass.HAN: "a character", TokenClass.COMMA: "'，'", TokenClass.STOP: "'。', '？' or '！'",
            }.get(token_class, "a character or mark")
            raise UsageError(f"--prompt does not fit: position {i + 1} is {ch!r} where {want} must stand")
        grammar.advance(ch)
