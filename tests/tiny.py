"""Tiny random models over the synthetic alphabet, built the same way by every test (conftest.py
shares the usual one as fixtures; property tests build one per drawn seed)."""

from __future__ import annotations

from pathlib import Path

import torch
from synth import ALPHABET

from poetgen import checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import SPECIALS, Vocab

MARKS = "，。？！；：、"
VOCAB = Vocab([*SPECIALS, *ALPHABET, *MARKS])

# A made-up tone table in the shape of a prepared corpus's tones.json ([平 count, 仄 count] per character):
# the first 20 characters read 平, the next 30 仄, the next 6 either way; the last 4 have no entry.
PING, ZE, EITHER = ALPHABET[0:20], ALPHABET[20:50], ALPHABET[50:56]
TONE_COUNTS = {**{c: [9, 0] for c in PING}, **{c: [0, 9] for c in ZE}, **{c: [5, 5] for c in EITHER}}


def tiny_model(seed: int = 0, vocab: Vocab = VOCAB, cell: str = "lstm", layers: int = 2, emb_size: int = 12,
               hidden_size: int = 16) -> LanguageModel:
    """A freshly initialized model (weights drawn from `seed`) in eval mode."""
    torch.manual_seed(seed)
    config = ModelConfig(len(vocab), emb_size=emb_size, hidden_size=hidden_size, num_layers=layers, cell=cell)
    return LanguageModel(config).eval()


def save_tiny(path: Path, model: LanguageModel | None = None, vocab: Vocab = VOCAB, script: str = "traditional",
              tones: dict | None = None) -> Path:
    """`model` (else tiny_model()) saved as a checkpoint file with `vocab`, `script` and tone counts."""
    checkpoint.save(path, model if model is not None else tiny_model(vocab=vocab), vocab, ModelMeta(script=script),
                    tones=tones)
    return path
