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

# A small model shape (ModelConfig keywords, dropout included) for tests of the model, its training and
# its checkpoints.
SMALL = dict(emb_size=24, hidden_size=32, num_layers=2, emb_dropout=0.1, dropout=0.2)

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


def prefix_score(model: LanguageModel, vocab: Vocab, title: str, body: str, prefix: int | None = None) -> float:
    """sample.score computed by the model's full forward pass: the mean log-probability per character
    of `body` given `title`, the end token counted; with `prefix`, of the body's first `prefix`
    characters alone (as a cut of best-of-N scores what a candidate has written so far)."""
    ids = torch.tensor([vocab.encode_record(title, body)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0], -1)[0]
    start = len(title) + 2
    stop = ids.size(1) if prefix is None else start + prefix
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(start, stop)) / (stop - start + (prefix is not None))


def survivors_by_hand(score_at, rows: int, cuts: list[tuple[int, int]]) -> list[int]:
    """The rows of one poem's best-of-`rows` that pruning keeps, computed here: at each (lines, keep)
    cut, the `keep` best of those still alive by score_at(row, lines), ties to the earlier row."""
    alive = list(range(rows))
    for lines, keep in cuts:
        so_far = {r: score_at(r, lines) for r in alive}
        alive = sorted(sorted(alive, key=lambda r: -so_far[r])[:keep])
    return alive


def as_records(callback):
    """A trainer's listener that hands `callback` each event as its metrics.jsonl record (a dict)."""
    return lambda event: callback(event.record())
