"""Checking poems' 格律 with one tone table, as `poetgen check` and `poetgen.check` both do."""

from __future__ import annotations

import os
from pathlib import Path

from . import prosody
from .errors import UsageError
from .text import is_han, to_script


class Checker:
    """The 格律 of poems under the tone table of a model (`checkpoint`, the shipped one when None) or of
    a prepared corpus (`data_dir`), with the 平水韵 rhyme table. Never imports torch."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, data_dir: Path | None = None):
        from .checkpoint import tone_counts

        self.tones = prosody.ToneTable.from_counts(tone_counts(checkpoint, data_dir))
        self.rhymes = prosody.load_rhymes("simplified")

    def check(self, poem: str) -> prosody.CheckResult:
        """The verdict on one poem's text; UsageError when it holds no Chinese character."""
        if not any(is_han(c) for c in poem):
            raise UsageError("give the text of one poem (found no Chinese characters)")
        return prosody.check_poem(to_script(poem, "simplified"), self.tones, self.rhymes)
