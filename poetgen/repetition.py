"""Repeated characters in a poem body: how many characters a poem uses twice or more, its 叠字
(an adjacent doubled character, 萧萧), and, over a set of poems, the human rate of a character's
second use that a decoder or a reranker could hold generated poems to.

The rule is the one a reader applies: the second character of a 叠字 pair is the same word, not a
repeat, so 萧萧 counts as one use of 萧; 萧萧 and a 萧 elsewhere in the poem count as two. Line marks
are not characters. Pure Python: no torch, no numpy."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from .text import LINE_END


def lines_of(body: str) -> list[str]:
    """The verse lines of a body, line marks removed; empty lines dropped."""
    out, line = [], ""
    for ch in body:
        if ch in LINE_END:
            if line:
                out.append(line)
            line = ""
        elif not ch.isspace():
            line += ch
    if line:
        out.append(line)
    return out


def _counted(line: str) -> Iterator[str]:
    """The characters of one line that count as uses: all but the second of a 叠字 pair."""
    for i, ch in enumerate(line):
        if not (i and line[i - 1] == ch and not (i > 1 and line[i - 2] == ch)):
            yield ch


def uses(body: str) -> Counter:
    """Uses of each character in one body; the second of a 叠字 pair (萧萧) is not a use, a third in
    a row (萧萧萧) is."""
    return Counter(ch for line in lines_of(body) for ch in _counted(line))


def has_reduplication(body: str) -> bool:
    """True when some line holds an adjacent doubled character (叠字, 萧萧)."""
    return any(a == b for line in lines_of(body) for a, b in zip(line, line[1:], strict=False))


@dataclass(frozen=True)
class PoemRepetition:
    """One body's repetition: `repeated` distinct characters used twice or more, whether it has a
    叠字, and the most uses of any one character."""

    repeated: int
    reduplicated: bool
    max_uses: int


def measure(body: str) -> PoemRepetition:
    """The repetition of one body (see the module docstring for what counts as a use)."""
    counts = uses(body)
    return PoemRepetition(repeated=sum(n >= 2 for n in counts.values()), reduplicated=has_reduplication(body),
                          max_uses=max(counts.values(), default=0))


@dataclass(frozen=True)
class RepetitionSummary:
    """Repetition over a set of poems: mean repeated characters per poem, and the shares of poems with
    any repeat, with a 叠字, and with a character used three times or more."""

    poems: int
    mean_repeated: float
    any_repeat: float
    reduplication: float
    thrice: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(bodies: Iterable[str]) -> RepetitionSummary:
    """The RepetitionSummary of a set of bodies (all zeros for none)."""
    rows = [measure(b) for b in bodies]
    n = len(rows)
    if not n:
        return RepetitionSummary(0, 0.0, 0.0, 0.0, 0.0)
    return RepetitionSummary(
        poems=n,
        mean_repeated=sum(r.repeated for r in rows) / n,
        any_repeat=sum(r.repeated > 0 for r in rows) / n,
        reduplication=sum(r.reduplicated for r in rows) / n,
        thrice=sum(r.max_uses >= 3 for r in rows) / n,
    )


@dataclass(frozen=True)
class SecondUse:
    """How poets reuse one character within a poem.

    `poems`: poems that use it; `reused`: those that use it twice or more; `p_again` = reused / poems,
    P(the character appears again | it is already in the poem); `expected`: the same probability if
    every use in the poem were drawn independently at corpus frequency, P(N >= 2 | N >= 1) for
    N ~ Binomial(uses in the poem, frequency), mean over the poems that use it; `lift` = p_again /
    expected, below 1 where poets avoid a second use and above 1 where they seek one; `same_line`:
    the share of its repeat uses (second and later) that fall in a line already holding it."""

    poems: int
    reused: int
    p_again: float
    expected: float
    lift: float
    same_line: float


def _again_by_chance(p: float, length: int) -> float:
    """P(N >= 2 | N >= 1) for N ~ Binomial(length, p): a character of frequency p, once in a poem
    of `length` independent draws, drawn again."""
    if p >= 1:
        return 1.0 if length >= 2 else 0.0
    some = -math.expm1(length * math.log1p(-p))  # P(N >= 1)
    once = length * p * math.exp((length - 1) * math.log1p(-p))  # P(N = 1)
    return max(some - once, 0.0) / some if some > 0 else 0.0


def second_use_stats(bodies: Iterable[str], min_poems: int = 1) -> dict[str, SecondUse]:
    """Per-character second-use statistics over a set of bodies, for characters used in at least
    `min_poems` of them; ordered by the number of poems that reuse the character, most first."""
    per_poem: list[tuple[Counter, int, list[str]]] = []
    totals: Counter = Counter()
    for body in bodies:
        counts = uses(body)
        if counts:
            per_poem.append((counts, sum(counts.values()), lines_of(body)))
            totals.update(counts)
    all_uses = sum(totals.values())
    poems: Counter = Counter()
    reused: Counter = Counter()
    expected_sum: dict[str, float] = {}
    second_uses: Counter = Counter()
    same_line: Counter = Counter()
    for counts, length, lines in per_poem:
        for ch, n in counts.items():
            p = totals[ch] / all_uses
            poems[ch] += 1
            expected_sum[ch] = expected_sum.get(ch, 0.0) + _again_by_chance(p, length)
            if n >= 2:
                reused[ch] += 1
        seen: set[str] = set()
        for line in lines:
            in_line: set[str] = set()
            for ch in _counted(line):
                if ch in seen:
                    second_uses[ch] += 1
                    same_line[ch] += ch in in_line
                seen.add(ch)
                in_line.add(ch)
    out = {}
    for ch in sorted(poems, key=lambda c: (-reused[c], -poems[c], c)):
        if poems[ch] < min_poems:
            continue
        p_again = reused[ch] / poems[ch]
        expected = expected_sum[ch] / poems[ch]
        out[ch] = SecondUse(poems=poems[ch], reused=reused[ch], p_again=p_again, expected=expected,
                            lift=p_again / expected if expected > 0 else 0.0,
                            same_line=same_line[ch] / second_uses[ch] if second_uses[ch] else 0.0)
    return out
