"""Keywords a poem must hold (`sample --keywords`): they open the plan, and line i of the body holds
keyword i, wherever in the line the model places it, enforced in decoding as acrostic heads are.

A line's keyword may start at any column of its line's allowed starts (`starts`): in a fixed form
none at an acrostic head, and it ends before the line's last character (the rhyme's); under --strict
only where each of its characters has the tone the row's template wants. The model chooses the start
as it writes; at the last allowed start the keyword is forced, and once started its characters follow.
Until a keyword stands in its line, its characters (and those of the keywords still to come) are kept
out of the rest of the poem, so the rule against a third use never meets a forced character. In free
form a line does not end, nor the poem, before its keyword is written, and the character budget keeps
room for the keywords still to come."""

from __future__ import annotations

from ..forms import Form, TokenClass
from ..text import is_han
from ..vocab import Vocab

FREE_LINE_END = 4  # free form: a keyword ends by a line's 4th character, so it fits a line of five
FREE, WANT_PING, WANT_ZE = 0, 1, 2  # what a position's tone must be (masks.VerseState.want holds these)


def starts(keyword: str, chars: int | None, head: bool, wants: list[int] | None = None,
           tone_of=None) -> list[int]:
    """The columns where `keyword` may start in a line of `chars` characters (None: free form), after an
    acrostic head when `head`. `wants` (per column, FREE/WANT_PING/WANT_ZE) and `tone_of(ch)` ->
    (is 平, is 仄) restrict them to tone-compatible starts (--strict)."""
    first = 1 if head else 0
    if chars is None:
        return list(range(first, max(first, FREE_LINE_END - len(keyword)) + 1))
    found = []
    for s in range(first, chars - len(keyword)):  # the last character stays free for the rhyme
        if wants is None or all(_fits(wants[s + i], tone_of(ch)) for i, ch in enumerate(keyword)):
            found.append(s)
    return found


def _fits(want: int, tone: tuple[bool, bool]) -> bool:
    return want == FREE or (want == WANT_PING and tone[0]) or (want == WANT_ZE and tone[1])


def line_need(keyword: str, head: bool) -> int:
    """Characters (its mark included) a free-form line needs at least to hold `keyword`: when the
    budget runs short the keyword starts at once (after the head), and the line ends after it."""
    return head + len(keyword) + 1


def plan_lines(form: Form | None, heads: str) -> int:
    """The keywords of a full plan: one a line of a fixed form or of a free-form acrostic, at most
    plan.MAX_PLAN_LINES (the longest plan the corpus's records carry; a free-form plan may end earlier)."""
    from ..plan import MAX_PLAN_LINES

    return form.lines if form is not None else min(len(heads) or MAX_PLAN_LINES, MAX_PLAN_LINES)


def check_keywords(keywords: tuple[str, ...], form: Form | None, heads: str, max_uses: int) -> str | None:
    """What makes these keywords impossible for the form (a message), or None: more than the plan's
    lines, too long for a line, a character used more than `max_uses` times across them and the
    acrostic heads (a 叠字 counts once)."""
    lines = plan_lines(form, heads)
    if len(keywords) > lines:
        what = f"the poem has {lines} lines" if form is not None or len(heads) == lines else \
            f"a plan has at most {lines} keywords"
        return f"--keywords has {len(keywords)} keywords but {what}: give at most {lines}"
    for i, k in enumerate(keywords):
        if form is not None and not starts(k, form.chars, i < len(heads)):
            room = form.chars - 1 - (i < len(heads))
            return (f"--keywords: {k} does not fit line {i + 1} of a {form.name}, which leaves {room} characters "
                    "for it (the last is the rhyme's, the first an acrostic head's): shorten it")
    counts: dict[str, int] = {}
    for h in heads:  # each acrostic head is a use of its character in the poem
        counts[h] = counts.get(h, 0) + 1
    for k in keywords:
        for j, ch in enumerate(k):
            if j == 0 or ch != k[j - 1]:
                counts[ch] = counts.get(ch, 0) + 1
    over = [ch for ch, n in counts.items() if n > max_uses]
    if over:
        times = "once" if max_uses == 1 else f"{max_uses} times"
        return (f"--keywords uses {'、'.join(over)} more than {times} (with the acrostic heads), "
                "which the rules of repetition forbid: choose other keywords")
    return None


def split_keywords(text: str) -> tuple[str, ...]:
    """The keywords of `--keywords 秋月,孤雁 …` (separated by commas, 、 or spaces); UsageError-ready
    message as ValueError for an empty one or one not of 1-4 Han characters."""
    from ..plan import MAX_KEYWORD

    given = text.strip()
    for mark in "，、":
        text = text.replace(mark, ",")
    pieces = [piece.split() for piece in text.split(",")]  # spaces part keywords too, any number of them
    if not any(pieces):
        raise ValueError("--keywords is empty: give 1 to 4 characters a line, e.g. 秋月,孤雁")
    if not all(pieces):
        raise ValueError(f"--keywords {given!r} holds an empty keyword (two commas in a row, or one at an "
                         "end): give one keyword a line from the first, e.g. 秋月,孤雁")
    words = [w for piece in pieces for w in piece]
    for w in words:
        if not (1 <= len(w) <= MAX_KEYWORD and all(is_han(c) for c in w)):
            raise ValueError(f"--keywords: {w!r} is not a keyword of 1 to {MAX_KEYWORD} Han characters: give e.g. "
                             "秋月,孤雁,归舟")
    return tuple(words)


class KeywordRows:
    """Each row's progress through its keywords: what a position must take, and what it may not."""

    def __init__(self, vocab: Vocab, keywords: tuple[str, ...], rows: int, starts_of: list[list[list[int]]]):
        self.ids = [[vocab.stoi[c] for c in k] for k in keywords]
        self.starts = starts_of  # [row][line]: the columns the line's keyword may start at
        self.placed = [[0] * len(keywords) for _ in range(rows)]  # [row][line]: its characters written
        self.needs: list[int] = []  # free form: the characters each keyword's line needs at most

    def pending(self, r: int, line: int) -> bool:
        """Whether row r's line `line` still owes its keyword."""
        return line < len(self.ids) and self.placed[r][line] < len(self.ids[line])

    def owed(self, r: int, line: int) -> int:
        """The keyword characters row r still owes in lines after `line`."""
        return sum(len(k) - p for k, p in zip(self.ids[line + 1:], self.placed[r][line + 1:], strict=True))

    def rule(self, r: int, line: int, col: int, hurry: bool = False) -> tuple[int, list[int]]:
        """Row r at (line, col): the token it must take (-1: none) and the tokens it may not take.
        `hurry`: start the keyword now (free form, when the budget runs short)."""
        banned = [t for k, p in zip(self.ids[line:], self.placed[r][line:], strict=True) if p == 0 for t in k]
        if not self.pending(r, line):
            return -1, banned
        k, p, allowed = self.ids[line], self.placed[r][line], self.starts[r][line]
        if p > 0:
            return k[p], []
        if hurry or col >= allowed[-1]:
            return k[0], []
        if col in allowed:
            banned = [t for t in banned if t != k[0]]
        return -1, banned

    def advance(self, r: int, line: int, col: int, token: int) -> None:
        """Row r took `token` at (line, col)."""
        if not self.pending(r, line):
            return
        p = self.placed[r][line]
        if p > 0 or (token == self.ids[line][0] and col in self.starts[r][line]):  # never at a head
            self.placed[r][line] = p + 1

    def step(self, line: int, col: int, size: int):
        """All rows at (line, col) (a fixed form): the forced tokens (rows,), -1 where free, and a float
        0/1 mask (rows, size) of what they may take, None when it bans nothing."""
        import torch

        forced = torch.full((len(self.placed),), -1, dtype=torch.long)
        mask = None
        for r in range(len(self.placed)):
            forced[r], banned = self.rule(r, line, col)
            if banned:
                if mask is None:
                    mask = torch.ones(len(self.placed), size)
                mask[r, banned] = 0.0
        return forced, mask

    def free_rule(self, r: int, grammar, token_class: str) -> tuple[str, int, list[int]]:
        """Row r of free form, whose grammar expects `token_class` next: the class it takes (no line end
        while the line owes its keyword, no poem end while a later line does), the token it must take
        (-1: none) and those it may not. When the budget (grammar.max_chars) runs short, the keyword
        starts at once, or the line ends, to leave the later keywords their room."""
        line, col = grammar.line, grammar.col
        later = sum(self.needs[line + 1:]) + 2 * max(0, len(grammar.heads) - max(line + 1, len(self.ids)))
        left = grammar.max_chars - grammar.chars
        if self.pending(r, line):
            if token_class in (TokenClass.HAN_OR_MARK, TokenClass.HAN_OR_STOP, TokenClass.HAN_OR_EOS):
                token_class = TokenClass.HAN
            k, p = self.ids[line], self.placed[r][line]
            hurry = col >= self.starts[r][line][0] and left <= len(k) - p + 1 + later
            forced, banned = self.rule(r, line, col, hurry)
            return token_class, forced, banned
        forced, banned = self.rule(r, line, col)
        if later:
            if token_class == TokenClass.HAN_OR_EOS:
                token_class = TokenClass.HAN
            elif col > 0 and left <= 1 + later:
                token_class = TokenClass.STOP
        return token_class, forced, banned

    def advance_all(self, line: int, col: int, tokens) -> None:
        for r, t in enumerate(tokens.tolist()):
            self.advance(r, line, col, t)

    def keep(self, rows) -> None:
        """Keep only these rows, in this order (best-of-N pruning)."""
        idx = rows.tolist()
        self.starts = [self.starts[i] for i in idx]
        self.placed = [list(self.placed[i]) for i in idx]


def fixed_rows(vocab: Vocab, keywords: tuple[str, ...], form: Form, heads: str, rows: int, verse_state=None,
               tone_of=None) -> KeywordRows:
    """KeywordRows for `rows` rows of a fixed form, each row's starts under its own template (--strict)."""
    starts_of = []
    for r in range(rows):
        per_line = []
        for line, k in enumerate(keywords):
            wants = None
            if verse_state is not None and verse_state.strict:
                wants = verse_state.want[r, line].tolist()
            per_line.append(starts(k, form.chars, line < len(heads), wants, tone_of))
        starts_of.append(per_line)
    return KeywordRows(vocab, keywords, rows, starts_of)


def free_rows(vocab: Vocab, keywords: tuple[str, ...], heads: str, rows: int) -> KeywordRows:
    """KeywordRows for `rows` free-form rows."""
    per_line = [starts(k, None, line < len(heads)) for line, k in enumerate(keywords)]
    found = KeywordRows(vocab, keywords, rows, [per_line for _ in range(rows)])
    found.needs = [line_need(k, line < len(heads)) for line, k in enumerate(keywords)]
    return found
