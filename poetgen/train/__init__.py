"""Training: a run planned from the user's options without side effects (plan), the parts it is set
up with (setup), where it stands and what last.pt saves (state, files), and the loop (trainer).

Importing this package is cheap; each name loads its module (and torch) on first use."""

from __future__ import annotations

import importlib

_LAZY = {  # name: the module that holds it
    "RunPlan": "plan", "plan_run": "plan", "train_run": "plan", "warm_start": "setup", "Position": "state",
    "RunLocked": "state", "RunState": "state", "TrainingDiverged": "state", "TrainingInterrupted": "state",
    "run_lock": "state", "MetricsFile": "trainer", "Trainer": "trainer",
}

__all__ = ["TrainConfig", *_LAZY]


def __getattr__(name: str):
    if name == "TrainConfig":
        from ..config import TrainConfig

        return TrainConfig
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
