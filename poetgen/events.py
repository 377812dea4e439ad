"""What a training run reports while it runs: one frozen dataclass per kind of event, each carrying
everything a progress display needs, so no display reads the trainer. `record()` is an event as the
JSON object metrics.jsonl holds (for the kinds that are logged there). Imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass(frozen=True)
class TrainEvent:
    """The base of the training events; `kind` is the record's "event" value."""

    kind: ClassVar[str] = ""
    logged: ClassVar[bool] = False  # written to metrics.jsonl

    def record(self) -> dict:
        """{"event": kind, field: value, ...}, with NaN and infinities as None (valid JSON)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"event": self.kind,
                **{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}}


@dataclass(frozen=True)
class RunStarted(TrainEvent):
    """The run begins (fresh, warm-started or resumed at `step`): what it trains, where, and for how long."""

    kind = "start"
    step: int
    epoch: int
    total_steps: int  # the steps of the whole run as far as known (a bar's length)
    stop_steps: int | None  # the step the run stops at by its budget (None: time alone)
    max_minutes: float | None  # the time budget (None: none)
    eval_every: int
    sampled_softmax: int  # negatives of a sampled softmax (0: the full softmax)
    cell: str
    num_layers: int
    hidden_size: int
    device: str
    val_ppl: float | None  # the last validation's perplexity (a resumed run), None before the first


@dataclass(frozen=True)
class Note(TrainEvent):
    """Something the user should know that does not stop the run."""

    kind = "note"
    message: str


@dataclass(frozen=True)
class TrainLog(TrainEvent):
    """Every log_every steps (and at each validation step): the train loss and speed since the last one."""

    kind = "log"
    logged = True
    step: int
    epoch: int
    train_loss: float  # the mean over the steps since the last log
    lr: float
    tokens_per_s: float
    elapsed_s: float
    total_steps: int


@dataclass(frozen=True)
class Tick(TrainEvent):
    """A sign of life between log lines (at most two a second): the figures so far since the last log."""

    kind = "tick"
    step: int
    epoch: int
    train_loss: float
    tokens_per_s: float
    elapsed_s: float
    total_steps: int


@dataclass(frozen=True)
class Validating(TrainEvent):
    """A validation begins (best.pt and last.pt are saved after it)."""

    kind = "evaluating"
    step: int


@dataclass(frozen=True)
class Validated(TrainEvent):
    """A validation ended: its figures on the val split, and whether they are the best so far."""

    kind = "eval"
    logged = True
    step: int
    epoch: int
    train_loss: float
    val_loss: float  # nats per character over whole records, the figure best.pt is chosen by
    val_bpc: float
    val_ppl: float
    val_body_ppl: float
    tokens_per_s: float
    elapsed_s: float
    best: bool  # a new best: best.pt was written
    cell: str
    hidden_size: int
    num_layers: int


@dataclass(frozen=True)
class RunEnded(TrainEvent):
    """The run ended (budget, time or early stopping); its summary is what `Trainer.run` returns."""

    kind = "end"
    logged = True
    step: int
    train_loss: float
    steps: int
    epochs: float  # epochs of the training stream seen, in tokens
    tokens_seen: int
    elapsed_s: float
    tokens_per_s: float
    best_val_loss: float
    best_val_ppl: float
    last_val: dict | None  # evaluate.evaluate_stream figures of the last validation
    stop_reason: str  # budget | time | early_stopping
    parameters: int
    out: str

    def summary(self) -> dict:
        """The run's summary (figures as they are, infinities included)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("step", "train_loss")}


__all__ = ["Note", "RunEnded", "RunStarted", "Tick", "TrainEvent", "TrainLog", "Validated", "Validating"]
