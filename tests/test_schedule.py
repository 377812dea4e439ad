"""The learning-rate schedule alone (no model), and the trainer following it step by step."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest

from poetgen.config import TrainConfig
from poetgen.schedule import Schedule

PEAK = 1e-2
COSINE = Schedule("adamw", PEAK, warmup_steps=10, min_lr_ratio=0.1, total_steps=110)


def cosine_at(progress: float, ratio: float = 0.1) -> float:
    return PEAK * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_warmup_ramps_linearly_to_the_peak():
    lrs = [COSINE.lr(step) for step in range(10)]
    assert lrs[0] == pytest.approx(PEAK / 10) and lrs[4] == pytest.approx(PEAK / 2) and lrs[9] == pytest.approx(PEAK)
    assert all(b - a == pytest.approx(PEAK / 10) for a, b in pairwise(lrs))  # straight line
    assert Schedule("adamw", PEAK, warmup_steps=0, total_steps=100).lr(0) == pytest.approx(PEAK)  # no warmup


def test_cosine_falls_from_the_peak_to_its_floor_and_stays_there():
    assert COSINE.lr(10) == pytest.approx(PEAK)  # the first step after warmup
    assert COSINE.lr(60) == pytest.approx(cosine_at(0.5)) == pytest.approx(0.55 * PEAK)  # halfway
    assert COSINE.lr(110) == pytest.approx(0.1 * PEAK)  # the floor: min_lr_ratio of the peak
    assert COSINE.lr(10_000) == pytest.approx(0.1 * PEAK)  # past the end (a longer --resume budget)
    after_warmup = [COSINE.lr(step) for step in range(10, 111)]
    assert all(b < a for a, b in pairwise(after_warmup))  # strictly falling
    assert Schedule("adamw", PEAK, min_lr_ratio=0.0, total_steps=100).lr(100) == pytest.approx(0.0, abs=1e-15)


def test_a_time_budget_drives_the_cosine_by_elapsed_seconds():
    by_time = Schedule("adamw", PEAK, warmup_steps=0, min_lr_ratio=0.1, total_minutes=2.0)
    assert by_time.lr(10**6, elapsed_s=0.0) == pytest.approx(PEAK)  # steps alone do not move it
    assert by_time.lr(5, elapsed_s=60.0) == pytest.approx(cosine_at(0.5))
    assert by_time.lr(5, elapsed_s=120.0) == pytest.approx(0.1 * PEAK)
    assert by_time.lr(5, elapsed_s=600.0) == pytest.approx(0.1 * PEAK)
    # with both budgets, whichever is further along sets the rate
    both = Schedule("adamw", PEAK, warmup_steps=0, min_lr_ratio=0.1, total_steps=100, total_minutes=10.0)
    assert both.lr(50, elapsed_s=0.0) == pytest.approx(cosine_at(0.5))
    assert both.lr(50, elapsed_s=540.0) == pytest.approx(cosine_at(0.9))
    assert both.lr(90, elapsed_s=60.0) == pytest.approx(cosine_at(0.9))
    assert both.cosine_progress(50, 540.0) == pytest.approx(0.9)


def test_sgd_keeps_the_peak_then_decays_once_per_epoch():
    sgd = Schedule("sgd", 1.0, warmup_steps=10, lr_decay=0.5, decay_after=2, total_steps=100)
    assert [sgd.lr(0, epoch=e) for e in range(6)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
    assert sgd.lr(0, epoch=3) == sgd.lr(99, elapsed_s=1e6, epoch=3) == 0.25  # epochs alone, no warmup or cosine
    assert Schedule("sgd", 0.8, lr_decay=0.1, decay_after=1).lr(0, epoch=2) == pytest.approx(0.008)


def test_the_schedule_takes_its_settings_from_the_train_config():
    sgd = Schedule.of(TrainConfig(optimizer="sgd", lr_decay=0.25, decay_after=3), 500, None)
    assert (sgd.peak_lr, sgd.lr_decay, sgd.decay_after, sgd.total_steps) == (1.0, 0.25, 3, 500)  # sgd's default rate
    adamw = Schedule.of(TrainConfig(lr=3e-3, warmup_steps=7, min_lr_ratio=0.2, max_minutes=5.0), None, 5.0)
    assert (adamw.peak_lr, adamw.warmup_steps, adamw.min_lr_ratio, adamw.total_minutes) == (3e-3, 7, 0.2, 5.0)
    assert adamw.lr(6) == pytest.approx(3e-3)  # the end of its warmup


def test_training_with_sgd_decays_the_rate_at_each_epoch_boundary(prepared, tmp_path):
    from poetgen.corpus import load_split
    from poetgen.model import ModelConfig
    from poetgen.train import Trainer
    from poetgen.vocab import Vocab

    vocab = Vocab.load(prepared / "vocab.json")
    cfg = TrainConfig(optimizer="sgd", lr=0.8, lr_decay=0.5, decay_after=1, epochs=3, batch_size=16, bptt=8,
                      eval_every=10**6, log_every=1, device="cpu")
    train = load_split(prepared, "train")[:16 * 25]  # 16 rows of 25 tokens: 3 windows an epoch
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=16, num_layers=1), cfg, vocab, train,
                      load_split(prepared, "val"), tmp_path / "run")
    trainer.run()
    per_epoch = trainer.windows_per_epoch
    assert per_epoch == 3
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lr_of_step = {e["step"]: e["lr"] for e in logs if e["event"] == "log"}
    assert sorted(lr_of_step) == list(range(1, 3 * per_epoch + 1))
    expected = [0.8] * per_epoch + [0.4] * per_epoch + [0.2] * per_epoch  # the rate of steps 1, 2, 3, ...
    assert [lr_of_step[s] for s in sorted(lr_of_step)] == pytest.approx(expected)


def test_a_short_budget_is_not_all_warmup():
    from poetgen.config import WARMUP_STEPS, warmup_steps_for

    assert warmup_steps_for(None, None) == WARMUP_STEPS and warmup_steps_for(None, 100_000) == WARMUP_STEPS
    assert warmup_steps_for(None, 50) == 5 and warmup_steps_for(None, 3) == 1
    assert warmup_steps_for(7, 50) == 7  # what the user gives stands
    assert Schedule.of(TrainConfig(max_steps=50), 50, None).warmup_steps == 5


def test_a_time_budget_ends_the_warmup_by_a_tenth_of_its_minutes():
    timed = Schedule("adamw", PEAK, warmup_steps=200, min_lr_ratio=0.1, total_minutes=1.0)
    assert timed.lr(9, elapsed_s=0.0) == pytest.approx(PEAK * 10 / 200)  # by steps while it is early
    assert timed.lr(9, elapsed_s=3.0) == pytest.approx(PEAK * 0.5)  # half of 6 s: half the peak
    after = timed.lr(18, elapsed_s=6.0)  # 18 steps in, 6 s: the warmup is over, the cosine has begun
    assert PEAK * 0.9 < after <= PEAK
    assert timed.lr(40, elapsed_s=60.0) == pytest.approx(PEAK * 0.1)  # the end of the budget
