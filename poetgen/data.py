"""Token streams cut into truncated-BPTT batches (pytorch word_language_model, torch-rnn)."""

from __future__ import annotations

import numpy as np
import torch


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
