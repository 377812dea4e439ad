"""An independent 格律 checker, written from the 粘对 rules rather than from poetgen's template tables,
to cross-check `poetgen check` and `sample --strict` (benchmarks/prosody.py uses it; the tests keep
their own copy, tests/independent_checker.py)."""

from __future__ import annotations

from poetgen.forms import split_lines


def independent_check(text: str, tones, rhymes) -> bool:
    """A second checker written from the 粘对 rules, not from template tables: in each line the even
    syllables alternate; the couplet's lines oppose at the 2nd syllable (对) and the next couplet
    sticks to the previous line (粘); even lines end 平 and rhyme in one 平声 group, odd lines but
    the first end 仄."""
    lines = [line[:-1] for line in split_lines(text)]

    def tone(ch):
        return tones.tone(ch)

    def same(a, b):
        return "*" in (tone(a), tone(b)) or tone(a) == tone(b)

    def differ(a, b):
        return "*" in (tone(a), tone(b)) or tone(a) != tone(b)

    for line in lines:
        even = line[1::2]
        if any(not differ(a, b) for a, b in zip(even, even[1:], strict=False)):
            return False
    for i in range(1, len(lines)):
        rule = differ if i % 2 == 1 else same
        if not rule(lines[i][1], lines[i - 1][1]):
            return False
    rhyme = [lines[i][-1] for i in range(1, len(lines), 2)]
    if tone(lines[0][-1]) == "平" or (tone(lines[0][-1]) == "*" and rhymes.of_char.get(lines[0][-1])):
        rhyme.append(lines[0][-1])
    if any(tone(c) == "仄" for c in rhyme):
        return False
    if any(tone(lines[i][-1]) == "平" for i in range(2, len(lines), 2)):
        return False
    shared = set.intersection(*(rhymes.of_char.get(c, set()) for c in rhyme))
    return bool(shared) and len(set(rhyme)) == len(rhyme)
