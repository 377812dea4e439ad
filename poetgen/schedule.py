"""The learning-rate schedule of a run, a pure function of where the run stands.

AdamW: a linear warmup to the peak rate (over its steps, or a tenth of a time budget if that ends
first), then a cosine down to `min_lr_ratio` of it, spanning the run's steps or its minutes,
whichever ends first. SGD (Zaremba et al.): the peak rate for the first
`decay_after` epochs, then multiplied by `lr_decay` once more at the start of each later epoch (a step
decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import WARMUP_SHARE, TrainConfig, warmup_steps_for


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule, fixed when a run starts (a resumed run keeps the one it started with)."""

    optimizer: str  # adamw: warmup then cosine; sgd: step decay by epoch
    peak_lr: float
    warmup_steps: int = 0  # adamw
    min_lr_ratio: float = 0.1  # adamw: the cosine ends at peak_lr * min_lr_ratio
    lr_decay: float = 0.5  # sgd: the factor applied at the start of each epoch after the first decay_after
    decay_after: int = 4  # sgd: epochs 1 to decay_after (counting from 1) run at the full rate
    total_steps: int | None = None  # adamw: the steps the cosine spans (None: total_minutes alone)
    total_minutes: float | None = None  # adamw: the minutes the cosine spans at most (None: steps alone)

    @classmethod
    def of(cls, config: TrainConfig, total_steps: int | None, total_minutes: float | None) -> Schedule:
        """The schedule of a run with `config`, spanning `total_steps` steps or `total_minutes` minutes."""
        return cls(optimizer=config.optimizer, peak_lr=config.peak_lr,
                   warmup_steps=warmup_steps_for(config.warmup_steps, total_steps),
                   min_lr_ratio=config.min_lr_ratio, lr_decay=config.lr_decay, decay_after=config.decay_after,
                   total_steps=total_steps, total_minutes=total_minutes)

    def lr(self, step: int, elapsed_s: float = 0.0, epoch: int = 0) -> float:
        """The learning rate of step `step` (counting from 0), taken `elapsed_s` seconds into the run,
        in epoch `epoch` (counting from 0)."""
        if self.optimizer == "sgd":
            return self.peak_lr * self.lr_decay ** self.decays(epoch)
        if step < self.warmup_steps:
            ramp = (step + 1) / self.warmup_steps
            if self.total_minutes:  # a time budget: the warmup ends by WARMUP_SHARE of it at the latest
                ramp = max(ramp, elapsed_s / (60 * self.total_minutes * WARMUP_SHARE))
            if ramp < 1:
                return self.peak_lr * ramp
        progress = self.cosine_progress(step, elapsed_s)
        return self.peak_lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def decays(self, epoch: int) -> int:
        """SGD: how many times the rate has been multiplied by lr_decay in epoch `epoch` (from 0)."""
        return max(0, epoch - self.decay_after + 1)

    def cosine_progress(self, step: int, elapsed_s: float) -> float:
        """How far the cosine has gone after warmup, from 0 to 1: by steps or by time, whichever is further."""
        progress = 0.0
        if self.total_steps:
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.total_minutes:
            progress = max(progress, elapsed_s / (60 * self.total_minutes))
        return min(1.0, max(0.0, progress))


__all__ = ["Schedule"]
