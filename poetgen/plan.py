"""The plan of a poem: one keyword a line, taken from the line by a statistical rule of the corpus.

Planning before writing (after Wang et al. 2016, "Chinese Poetry Generation with Planning based
Neural Network"): a training record carries, between its title and its body, the poet's name (for
poets the train split holds often enough) and one keyword for each line of the body, so that a model
learns to write a plan from a title and then each line around its keyword.

The keyword of a line is its most distinctive attested word, with no segmenter: among the line's
two-character words that hold together (pointwise mutual information of the pair at least
MIN_PMI, in at least MIN_WORD_POEMS poems of the train split) the one with the highest
PMI + ½·log(poems that hold it); a line with no such word gives its rarest character among those at
least MIN_CHAR_POEMS poems hold (and failing that its most common one)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .text import LINE_END

MIN_PMI = 2.5  # log-odds of the pair against its characters drawn apart (nats)
MIN_WORD_POEMS = 10  # a two-character keyword is held by at least this many train poems
MIN_CHAR_POEMS = 100  # a one-character keyword likewise (rarer ones are names and odd glyphs)
MIN_POET_POEMS = 30  # a poet's name goes into the records once the train split holds this many of theirs
PLAN_SHARE = 80  # percent of train records that carry their plan (the rest train writing without one)
POET_SHARE = 80  # percent of a known poet's train records that carry the name
MAX_PLAN_LINES = 8  # a record carries a plan only for a body of at most this many lines (the fixed forms')
ANONYMOUS = frozenset({"不详", "无名氏", "佚名", "缺名", "阙名"})  # names of no poet: never a manner
MAX_KEYWORD = 4  # characters of a keyword a user may give (the corpus's are one or two)


def body_lines(body: str) -> list[str]:
    """The lines of a body without their end marks (a line ends at any of LINE_END)."""
    lines, current = [], []
    for ch in body:
        if ch in LINE_END:
            if current:
                lines.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        lines.append("".join(current))
    return lines


@dataclass
class KeywordRule:
    """Counts of the train split that pick each line's keyword (`keyword`, `plan`)."""

    chars: Counter  # occurrences of each character inside lines
    pairs: Counter  # occurrences of each adjacent pair inside a line
    char_poems: Counter  # poems holding each character
    pair_poems: Counter  # poems holding each pair
    poems: int

    @classmethod
    def fit(cls, bodies: Iterable[str]) -> KeywordRule:
        chars, pairs, char_poems, pair_poems, poems = Counter(), Counter(), Counter(), Counter(), 0
        for body in bodies:
            seen_chars, seen_pairs = set(), set()
            for line in body_lines(body):
                chars.update(line)
                seen_chars.update(line)
                grams = [line[i:i + 2] for i in range(len(line) - 1)]
                pairs.update(grams)
                seen_pairs.update(grams)
            char_poems.update(seen_chars)
            pair_poems.update(seen_pairs)
            poems += 1
        return cls(chars, pairs, char_poems, pair_poems, poems)

    def __post_init__(self) -> None:
        self._log_norm = math.log(max(sum(self.chars.values()), 1) ** 2 / max(sum(self.pairs.values()), 1))

    def pmi(self, word: str) -> float:
        """Pointwise mutual information of a two-character word, in nats."""
        return math.log(self.pairs[word] / (self.chars[word[0]] * self.chars[word[1]])) + self._log_norm

    def keyword(self, line: str) -> str:
        """The keyword of one line (see the module's docstring); '' for an empty line."""
        best: tuple[float, str] | None = None
        for i in range(len(line) - 1):
            word = line[i:i + 2]
            if self.pair_poems[word] >= MIN_WORD_POEMS:
                pmi = self.pmi(word)
                score = pmi + 0.5 * math.log(self.pair_poems[word])
                if pmi >= MIN_PMI and (best is None or score > best[0]):
                    best = (score, word)
        if best is not None:
            return best[1]
        common = [c for c in line if self.char_poems[c] >= MIN_CHAR_POEMS]
        if common:
            return min(common, key=lambda c: self.char_poems[c])
        return max(line, key=lambda c: self.char_poems[c], default="")

    def plan(self, body: str) -> list[str]:
        """One keyword for each line of `body`."""
        return [self.keyword(line) for line in body_lines(body)]


def poets(authors: Iterable[str], min_poems: int = MIN_POET_POEMS) -> dict[str, int]:
    """{poet: poems} of the names that `authors` (one entry a poem) holds at least `min_poems` times."""
    counts = Counter(a for a in authors if a and a not in ANONYMOUS)
    return {name: n for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_poems}


def carries(poem_id: str, what: str, share: int) -> bool:
    """Whether a train record carries its plan or poet (`what`), for `share` percent of the records:
    decided by the poem's id alone, so a rebuild writes the same records."""
    bucket = int(hashlib.sha1(f"{what}:{poem_id}".encode()).hexdigest(), 16) % 100
    return bucket < share
