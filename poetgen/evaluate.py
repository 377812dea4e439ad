"""`poetgen eval`: loss of a checkpoint on a corpus split or on a text file of poems."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checkpoint, corpus
from .errors import CorpusError, UsageError
from .train import evaluate_stream, metrics_from_loss, pick_device
from .vocab import Vocab


def file_stream(path: Path, vocab, script: str | None) -> tuple[np.ndarray, int]:
    """Token stream of a UTF-8 file, one poem body per line, each as the record <bos> <sep> body <eos>,
    converted to the model's script. Returns the stream and the count of unknown characters."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--file {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--file {path} is not UTF-8 text: convert it to UTF-8") from None
    lines = [line.strip().replace(" ", "") for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise UsageError(f"--file {path} holds no poem: write one poem per line")
    if script == "simplified":
        convert = corpus.make_converter("simplified")
        lines = [convert(line) for line in lines]
    ids: list[int] = []
    unknown = 0
    for line in lines:
        ids.extend(vocab.encode_record("", line))
        unknown += sum(1 for c in line if c not in vocab)
    return np.asarray(ids, dtype=np.int64), unknown


def run(checkpoint_path: Path | None, split: str | None = None, file: Path | None = None,
        data_dir: Path | None = None, device: str = "cpu", rows: int = 1, bptt: int = 256) -> dict:
    """Evaluate; returns nats_per_char, bits_per_char, perplexity, chars (predicted tokens), unknown.
    With rows=1 every token after the first is predicted, the state carried across the whole stream."""
    path = checkpoint_path or checkpoint.default_checkpoint()
    model, vocab, meta = checkpoint.load(path, pick_device(device))
    if split is not None:
        if split not in ("val", "test", "train"):
            raise UsageError(f"unknown split {split!r}: choose val or test")
        corpus.load_meta(data_dir)
        if vocab.tokens != Vocab.load(data_dir / "vocab.json").tokens:
            raise CorpusError(f"{path} was trained on another vocabulary than the corpus in {data_dir}: "
                              "evaluate with --file, or prepare the corpus it was trained on")
        stream = corpus.load_tokens(data_dir, split).astype(np.int64)
        unknown = int((stream == vocab.unk_id).sum())
        source = f"{split} split"
    else:
        stream, unknown = file_stream(file, vocab, meta.get("script"))
        source = str(file)
    if len(stream) < 2:
        raise UsageError("nothing to evaluate: the text is empty")
    total, count = evaluate_stream(model, stream, model.embed.weight.device, rows=min(rows, len(stream) // 2),
                                   bptt=bptt)
    result = metrics_from_loss(total / count)
    result.update(chars=count, unknown=unknown, source=source, checkpoint=str(path))
    return result
