"""Sampling poems: the request and its one validation (request), the choice of each next token (choice),
the decoding loops (decode), best-of-N's scores, cuts and pick (rank), and the Sampler that puts a
request and a loaded model together (session).

Importing this package is cheap: request needs no torch, and the other names load on first use."""

from __future__ import annotations

import importlib

from .request import (
    MAX_CHARS,
    MAX_NUM,
    SAMPLE_DEVICE,
    SAMPLE_FORMATS,
    SCORES,
    TEMPLATES,
    SampleOptions,
    SampleRequest,
    VerseOptions,
    sample_request,
)

_LAZY = {  # name: the module that holds it (imports torch)
    "Chooser": "choice", "Streams": "choice", "draw": "choice", "filter_logits": "choice", "poem_seed": "choice",
    "Decoder": "decode", "GeneratedPoem": "rank", "CUTS": "rank", "CUT_MIN": "rank", "pick": "rank",
    "pruned": "rank", "score": "rank", "Generator": "session", "MAX_ROWS": "session", "Sampler": "session",
}

__all__ = ["MAX_CHARS", "MAX_NUM", "SAMPLE_DEVICE", "SAMPLE_FORMATS", "SCORES", "TEMPLATES", "SampleOptions",
           "SampleRequest", "VerseOptions", "sample_request", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
