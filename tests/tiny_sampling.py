"""The alphabet, vocabulary and tiny models the sampling tests draw from (tests/test_sample*.py): the
synthetic characters plus 汉春风, so that prompts in real characters and traditional input can be tried."""

from __future__ import annotations

import tiny
from synth import ALPHABET

from poetgen.model import LanguageModel
from poetgen.vocab import SPECIALS, Vocab

CHARS = ALPHABET[:40] + list("汉春风")
VOCAB = Vocab([*SPECIALS, *CHARS, *"，。？！；：、"])


def tiny_model(seed: int, cell: str = "lstm", layers: int = 2) -> LanguageModel:
    """A freshly initialized tiny model over VOCAB (weights drawn from `seed`) in eval mode."""
    return tiny.tiny_model(seed, VOCAB, cell=cell, layers=layers)
