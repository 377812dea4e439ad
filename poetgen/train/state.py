"""A run's state: where it stands (Position), what last.pt saves of it (RunState), the meter of its
log lines, the stop signals it turns into a clean stop, its lock, and the errors that end it."""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch

from ..errors import CheckpointError, PoetgenError
from ..model import State
from ..paths import exclusive_lock

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, schedulers, a closed terminal


class TrainingInterrupted(PoetgenError):
    """A stop signal during training: last.pt was saved; the message tells how to resume."""

    exit_code = 130


class TrainingDiverged(PoetgenError):
    """The loss became NaN or infinite: the run stops before saving garbage."""


class RunLocked(PoetgenError):
    """Another process trains into the same folder."""

    exit_code = 2


def run_lock(out: Path):
    """Hold an exclusive lock on `out` for the whole run; RunLocked when another process holds it."""
    return exclusive_lock(out, RunLocked(f"another `poetgen train` is writing into {out}: wait for it, or choose "
                                         "another --out"))


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the loop checks between steps (and a validation checks as
    it goes), so the state saved is always that of a finished step. Signals after the first are
    counted and otherwise ignored: a second Ctrl-C must not cut a step or the save of last.pt in half.
    (SIGKILL still stops anything; last.pt then keeps its previous save.)"""

    def __init__(self):
        self.signal_name: str | None = None
        self.again = 0  # signals after the first
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            self.again += 1
            return
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


@dataclass
class Meter:
    """The train loss and throughput since the last log line, and the figures that line reported."""

    origin: float  # perf_counter() less the seconds trained before: the run's elapsed time is now - origin
    since: float  # perf_counter() at the last log line
    tokens: int = 0
    loss_sum: float = 0.0
    steps: int = 0
    train_loss: float = math.nan  # of the last log line
    tokens_per_s: float = 0.0  # of the last log line
    last_tick: float = 0.0  # perf_counter() at the last tick

    def add(self, loss: float, tokens: int) -> None:
        """Count one training step."""
        self.tokens += tokens
        self.loss_sum += loss
        self.steps += 1

    def rate(self, now: float) -> float:
        """Tokens per second since the last log line."""
        return self.tokens / max(now - self.since, 1e-9)

    def mean_loss(self) -> float:
        """The mean train loss since the last log line (at least one step)."""
        return self.loss_sum / self.steps

    def close(self, now: float) -> None:
        """A log line: its figures become the reported ones and a new window starts."""
        self.tokens_per_s, self.train_loss = self.rate(now), self.mean_loss()
        self.since, self.tokens, self.loss_sum, self.steps = now, 0, 0.0, 0

    def close_loss(self) -> None:
        """The run's last figures: the train loss of the steps since the last log line, if any."""
        if self.steps:
            self.train_loss = self.mean_loss()


@dataclass
class Position:
    """Where a run stands beyond its weights, the one copy the loop moves forward; RunState saves it."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # the epoch's next TBPTT window
    hidden: State = None  # the hidden state carried into that window (None: zeros)
    teacher_hidden: State = None  # --teacher: the teacher's, likewise
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training so far
    best_val: float = math.inf  # the best validation loss so far (nats per character)
    evals_since_best: int = 0  # validations without improvement (--patience counts them)
    evaluated_step: int | None = None  # the step of the last finished validation
    pending_eval: dict | None = None  # a validation a stop signal cut short ({train_loss, tokens_per_s})


POSITION_FIELDS = tuple(f.name for f in fields(Position) if f.name not in ("hidden", "teacher_hidden"))


@dataclass
class RunState:
    """Where a run stands beyond its weights: last.pt's training state, saved as is (field → key) and
    restored in one place, so a resumed run continues exactly as if it had never stopped."""

    step: int
    epoch: int
    window: int  # the epoch's next TBPTT window
    hidden: list | None  # the hidden state carried into that window, on the CPU (None: zeros)
    tokens_seen: int
    elapsed: float  # seconds of training so far
    best_val: float  # the best validation loss so far (nats per character; inf before the first)
    evals_since_best: int  # validations without improvement (--patience counts them)
    evaluated_step: int | None  # the step of the last finished validation
    pending_eval: dict | None  # a validation a stop signal cut short ({train_loss, tokens_per_s}): redone first
    train_config: dict
    schedule_steps: int | None  # the span of the learning-rate schedule, fixed when the run started
    schedule_minutes: float | None
    optimizer: dict  # the optimizer's state_dict
    rng: dict  # the random generators' states (torch, and cuda on a GPU)
    meter: dict | None = None  # the train loss since the last log line ({loss_sum, steps}): the resumed
    # run's next log line then reports what the uninterrupted run's does (absent in older files: none)
    teacher_hidden: list | None = None  # --teacher: the teacher's hidden state, as `hidden`
    teacher_sha256: str | None = None  # --teacher: its file's digest (a resume refuses another file)


    @classmethod
    def of(cls, position: Position, **rest) -> RunState:
        """The saved form of `position` (the hidden states copied to the CPU) with the rest of the state."""
        def saved(hidden: State) -> list | None:
            return None if hidden is None else [s.cpu() for s in (hidden if isinstance(hidden, tuple) else (hidden,))]

        return cls(**{name: getattr(position, name) for name in POSITION_FIELDS}, hidden=saved(position.hidden),
                   teacher_hidden=saved(position.teacher_hidden), **rest)

    def position(self, lstm: bool, device: torch.device, teacher_lstm: bool = True) -> Position:
        """The Position this state saved, its hidden states on `device` (`lstm`, `teacher_lstm`: whether
        the student's and the teacher's cells are LSTMs, whose state is a pair)."""
        def restored(hidden: list | None, pair: bool) -> State:
            if hidden is None:
                return None
            return tuple(h.to(device) for h in hidden) if pair else hidden[0].to(device)

        return Position(**{name: getattr(self, name) for name in POSITION_FIELDS}, hidden=restored(self.hidden, lstm),
                        teacher_hidden=restored(self.teacher_hidden, teacher_lstm))

    def to_dict(self) -> dict:
        """The training state as last.pt stores it (a shallow dict: tensors are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, train_state: dict, path: Path) -> RunState:
        """The training state last.pt at `path` holds; CheckpointError when a field is missing (a file
        of an older poetgen)."""
        missing = [f.name for f in fields(cls) if f.name not in train_state and f.default is MISSING]
        if missing:
            raise CheckpointError(f"{path} holds the training state of an older poetgen (no {missing[0]}): start "
                                  f"a new run from its weights with --init-from {path}")
        return cls(**{f.name: train_state[f.name] for f in fields(cls) if f.name in train_state})
