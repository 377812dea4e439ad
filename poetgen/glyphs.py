"""Standard glyphs for simplified text.

OpenCC's t2s converts traditional characters to simplified ones but leaves variant forms alone
(劒, 疎, 鴈 …) and turns a few characters into forms outside the Basic Multilingual Plane that
common fonts cannot draw (鑪 → 𬬻). After t2s, character by character:

- a compatibility ideograph becomes its unified character (Unicode NFC);
- a character t2s put outside the BMP takes a BMP form: the standard one of its variant group,
  else the character the source had;
- a character GB 2312 lacks becomes the one GB 2312 member of its variant group (the `yitizi`
  package's variant data, read through t2s). Where the group holds several (勅: 敕, 徕, 来) or none,
  it is left as it is;
- a character GB 2312 has is never merged: 乾 (乾坤) stays 乾, 徵 (宫商角徵羽) stays 徵.

No torch: `poetgen check` converts with this."""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter

from .errors import CorpusError

KINDS = ("compat", "outside_bmp", "variant")  # what a change is counted as
LEFT_AMBIGUOUS = "left_ambiguous"  # a variant with several standard forms, kept (counted, not changed)
LEFT_OUTSIDE_BMP = "left_outside_bmp"  # outside the BMP with no BMP form at all, kept


def in_gb2312(ch: str) -> bool:
    try:
        ch.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


def _is_ideograph(ch: str) -> bool:
    c = ord(ch)
    return 0x3400 <= c <= 0x9FFF or 0xF900 <= c <= 0xFAFF or 0x20000 <= c <= 0x3FFFF


class Normalizer:
    """Text to standard simplified glyphs (see the module docstring). Counts what it changes, and
    what it had to leave, in `counts` (by kind) and `pairs` ((from, to, kind) → occurrences)."""

    def __init__(self) -> None:
        try:
            import opencc
        except ImportError:
            raise CorpusError("OpenCC is not installed: pip install opencc, or use --script traditional") from None
        try:
            import yitizi
        except ImportError:
            raise CorpusError("yitizi is not installed: pip install yitizi, or use --script traditional") from None
        self._t2s = opencc.OpenCC("t2s").convert
        self._variants = yitizi.get
        self.counts: Counter = Counter()
        self.pairs: Counter = Counter()

    @functools.cache  # noqa: B019 - one Normalizer per process or build
    def standard(self, ch: str) -> tuple[str | None, bool]:
        """(the one GB 2312 form of ch's variant group or None, whether there were several)."""
        found = set()
        for v in self._variants(ch):
            for w in (v, self._t2s(v)):
                if len(w) == 1 and in_gb2312(w):
                    found.add(w)
        found.discard(ch)
        if len(found) == 1:
            return found.pop(), False
        return None, len(found) > 1

    @functools.cache  # noqa: B019
    def char(self, source: str, converted: str) -> tuple[str, str | None]:
        """(the standard form, the kind of change or of what was left, or None) of `converted`, the
        t2s form of `source`."""
        ch = unicodedata.normalize("NFC", converted)
        kind = "compat" if ch != converted else None
        if not _is_ideograph(ch):
            return ch, kind
        if ord(ch) > 0xFFFF:
            std = self.standard(ch)[0] or self.standard(source)[0]
            if std is not None:
                return std, "outside_bmp"
            if ord(source) <= 0xFFFF:
                return source, "outside_bmp"
            return ch, LEFT_OUTSIDE_BMP
        if in_gb2312(ch):
            return ch, kind
        std, several = self.standard(ch)
        if std is not None:
            return std, "variant"
        return ch, LEFT_AMBIGUOUS if several else kind

    def __call__(self, text: str) -> str:
        """`text` (any script) in standard simplified glyphs."""
        converted = self._t2s(text)
        sources = text if len(text) == len(converted) else converted  # t2s is 1:1 but for rare phrases
        out = []
        for s, c in zip(sources, converted, strict=True):
            ch, kind = self.char(s, c)
            if kind is not None:
                self.counts[kind] += 1
                self.pairs[(c, ch, kind)] += 1
            out.append(ch)
        return "".join(out)

    def is_standard(self, ch: str) -> bool:
        """True if normalizing `ch` (already simplified) leaves it as it is."""
        return self.char(ch, ch)[0] == ch


@functools.cache
def normalizer() -> Normalizer:
    """The process's normalizer for text users give (its counts are not used)."""
    return Normalizer()


def drawable(ch: str) -> bool:
    """True for a character a simplified poem may show: inside the BMP and in standard form."""
    return ord(ch) <= 0xFFFF and normalizer().is_standard(ch)
