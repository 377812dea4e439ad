"""Token streams and truncated-BPTT batches (pytorch word_language_model, torch-rnn).

A stream is the concatenation of records ``<bos> title <sep> body <eos>``: a prepared split read
from disk, or a text file of poems encoded the same way."""

from __future__ import annotations

import numpy as np
import torch

from .text import LINE_END, to_script
from .vocab import Vocab


def file_records(text: str, path="--file") -> list[tuple[str, str]]:
    """(title, body) per poem of `text`: JSON lines or poems separated by blank lines as a corpus takes
    them from a user's file (corpus.user), else one poem a non-empty line, `title<TAB>body` or a body
    alone (empty title; spaces inside a line dropped)."""
    from .corpus import user

    lines = text.splitlines()
    if user.file_format(lines) == "jsonl" or _poems_of_lines(lines):
        return user.parse_poems(text, path)
    records = []
    for line in text.splitlines():
        title, _, body = line.rpartition("\t")
        title, body = "".join(title.split()), "".join(body.split())
        if body:
            records.append((title, body))
    return records


def _poems_of_lines(lines: list[str]) -> bool:
    """Whether a text file holds poems of several lines separated by blank lines (a user's corpus file)
    rather than one poem a line: a title line in 《》, or, with blank lines between blocks of several
    lines and no tab, lines that are verse lines (at most two end marks each, where a whole poem on a
    line has four or more)."""
    filled = [line.strip() for line in lines if line.strip()]
    if any(line.startswith("《") and line.endswith("》") for line in filled):
        return True
    several = any(a.strip() and b.strip() for a, b in zip(lines, lines[1:], strict=False))
    if not several or len(filled) == len(lines) or any("\t" in line for line in filled):
        return False
    marks = sorted(sum(ch in LINE_END for ch in line) for line in filled)
    return marks[len(marks) // 2] <= 2


def encode_records(records: list[tuple[str, str]], vocab: Vocab, script: str | None) -> tuple[np.ndarray, int]:
    """The token stream of (title, body) records converted to `script`, and its count of unknown characters."""
    ids: list[int] = []
    unknown = 0
    for title, body in records:
        title, body = to_script(title, script), to_script(body, script)
        ids.extend(vocab.encode_record(title, body))
        unknown += sum(1 for c in title + body if c not in vocab)
    return np.asarray(ids, dtype=np.int64), unknown


def body_targets(stream: np.ndarray, vocab: Vocab) -> np.ndarray:
    """A boolean per token of `stream`: True where the token belongs to a poem's body or is its <eos>,
    i.e. where the last record marker (<bos>, <sep>, <eos>) before it is <sep>."""
    stream = np.asarray(stream)
    is_marker = np.isin(stream, (vocab.bos_id, vocab.sep_id, vocab.eos_id))
    # the position of the marker most recently seen at or before each position (forward fill)
    idx = np.where(is_marker, np.arange(len(stream)), -1)
    np.maximum.accumulate(idx, out=idx)
    before = np.full(stream.shape, -1, dtype=np.int64)
    before[1:] = np.where(idx[:-1] >= 0, stream[np.maximum(idx[:-1], 0)], -1)
    return before == vocab.sep_id


def batchify(stream: np.ndarray | torch.Tensor, rows: int) -> torch.Tensor:
    """Cut a 1-D token stream into `rows` contiguous rows: (rows, N), the tail that does not
    fill a row dropped. Row r continues where row r-1's text would have gone on."""
    data = torch.as_tensor(np.asarray(stream, dtype=np.int64)) if not torch.is_tensor(stream) else stream.long()
    n = data.numel() // rows
    if n < 2:
        raise ValueError(f"a stream of {data.numel()} tokens is too short for {rows} rows")
    return data[: n * rows].view(rows, n)


def num_windows(batched: torch.Tensor, bptt: int) -> int:
    """How many (B, T) windows one pass over a batchified stream takes."""
    return (batched.size(1) - 1 + bptt - 1) // bptt


def get_batch(batched: torch.Tensor, index: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `index`-th window: inputs (B, T) and next-token targets (B, T); the last may be shorter."""
    start = index * bptt
    length = min(bptt, batched.size(1) - 1 - start)
    return batched[:, start : start + length], batched[:, start + 1 : start + 1 + length]
