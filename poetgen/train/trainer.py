"""The training loop: stateful truncated BPTT, global-norm clipping, AdamW with warmup and cosine
decay (or Zaremba-style SGD with step decay), periodic validation, best/last checkpoints and an
exact resume. The loop moves one Position forward; every event goes to the run's listeners, the
metrics file among them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..config import ModelConfig, TrainConfig, warmup_steps_for
from ..data import batchify, get_batch, num_windows
from ..device import autocast, pick_device, use_bf16
from ..errors import UsageError
from ..evaluate import evaluate_stream, perplexity
from ..events import Note, RunEnded, RunStarted, Tick, TrainEvent, TrainLog, Validated, Validating
from ..model import LanguageModel, detach_state
from ..paths import file_sha256
from ..schedule import Schedule
from ..text import finite
from ..vocab import Vocab
from .files import RunFiles, run_meta, software
from .plan import read_teacher
from .setup import check_streams, make_optimizer, negative_sampler, sampled_softmax_warning, warm_start
from .state import (
    Meter,
    Position,
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    run_lock,
)


class MetricsFile:
    """The listener that appends the logged events (TrainEvent.logged) to a run's metrics.jsonl."""

    def __init__(self, out: Path):
        self.path = Path(out) / "metrics.jsonl"

    def __call__(self, event: TrainEvent) -> None:
        if event.logged:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(finite(event.record()), allow_nan=False) + "\n")


class Trainer(RunFiles):
    """One training run writing into `out`: best.pt, last.pt and metrics.jsonl. `listeners` hear each
    typed event (poetgen.events) as it happens. `init_checkpoint` is the --init-from checkpoint already
    loaded (RunPlan.init_checkpoint); without it, the file train_config.init_from names is read."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, vocab: Vocab,
                 train_stream: np.ndarray, val_stream: np.ndarray, out: Path, corpus_meta: dict | None = None,
                 tones: dict | None = None, data_dir: Path | None = None, *,
                 listeners: list[Callable[[TrainEvent], None]] = (), init_checkpoint: Checkpoint | None = None,
                 doubles: dict | None = None, teacher: Checkpoint | None = None):
        self.cfg, self.model_config = train_config.validate(), model_config.validate()
        if model_config.vocab_size != len(vocab):
            raise UsageError(f"model vocabulary {model_config.vocab_size} differs from the corpus's {len(vocab)}")
        self.vocab, self.tones, self.doubles = vocab, tones, doubles  # doubles: corpus.count_doubles's table
        self.data_dir, self.out, self.corpus_meta = data_dir, Path(out), corpus_meta or {}
        self.listeners = [MetricsFile(self.out), *listeners]
        self.software = software()
        self.device = pick_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.model = LanguageModel(model_config)
        if self.cfg.init_from:
            ckpt = init_checkpoint or checkpoint.read(self.cfg.init_from)
            self._note(warm_start(self.model, ckpt, vocab, self.corpus_meta.get("script")))
        self.model.to(self.device)
        self.teacher = None  # --teacher: its model, in eval mode, never trained
        self.teacher_sha256 = None  # and its file's digest, which last.pt keeps: a resume needs the same teacher
        if self.cfg.teacher:
            teacher = teacher or read_teacher(Path(self.cfg.teacher), vocab)
            self.teacher = checkpoint.build_model(teacher, self.device).requires_grad_(False)
            self.teacher_sha256 = file_sha256(Path(self.cfg.teacher))
        use_bf16(self.device, self.cfg.precision)  # a precision the device lacks fails here, not mid-run
        check_streams(train_stream, val_stream, self.cfg.batch_size)
        self.train_data = batchify(train_stream, self.cfg.batch_size).to(self.device)  # (B, N)
        self.negatives = None
        if self.cfg.sampled_softmax:
            self.negatives = negative_sampler(train_stream, self.cfg.sampled_softmax, len(vocab)).to(self.device)
            self._note(sampled_softmax_warning(self.cfg.sampled_softmax, len(vocab)))
        self.val_stream = np.asarray(val_stream, dtype=np.int64)
        self.windows_per_epoch = num_windows(self.train_data, self.cfg.bptt)
        # the schedule is fixed here (the warmup too, stored in the run's config); on --resume from last.pt
        self.cfg = replace(self.cfg, warmup_steps=warmup_steps_for(self.cfg.warmup_steps, self.stop_steps))
        self.schedule = Schedule.of(self.cfg, self.stop_steps, self.cfg.max_minutes)
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.position = Position()
        self.last_val: dict | None = None
        self.eval_seconds = 0.0  # how long the last validation took
        self._stop: StopRequest | None = None  # while run() runs
        self._meter: Meter | None = None  # while run() runs: what last.pt saves of the loss since the last log
        self._meter_carry: dict | None = None  # from last.pt on --resume

    @property
    def stop_steps(self) -> int | None:
        """The step the run stops at, by its current budget (None: time alone)."""
        by_epochs = self.cfg.epochs * self.windows_per_epoch if self.cfg.epochs else None
        options = [n for n in (self.cfg.max_steps, by_epochs) if n]
        return min(options) if options else None

    @property
    def total_steps(self) -> int:
        """Steps of the whole run as far as known (for progress displays)."""
        return self.stop_steps or self.schedule.total_steps or max(self.position.step, 1)

    def lr_at(self, step: int, elapsed: float) -> float:
        """The learning rate of `step`, `elapsed` seconds into the run, in the current epoch."""
        return self.schedule.lr(step, elapsed, self.position.epoch)

    # -- events --------------------------------------------------------------------------------
    def _emit(self, event: TrainEvent) -> None:
        for listener in self.listeners:
            listener(event)

    def _note(self, message: str | None) -> None:
        if message:
            self._emit(Note(message))

    # -- loop ----------------------------------------------------------------------------------
    def validate(self) -> dict:
        """Record and body figures on the val split (evaluate.py's protocol). A stop signal during a
        run's validation interrupts it; the resumed run validates that step again."""
        stop = self._stop

        def check(done: int, total: int) -> None:
            if stop is not None and stop.signal_name:
                raise KeyboardInterrupt

        return evaluate_stream(self.model, self.val_stream, self.vocab, self.device, self.cfg.precision,
                               progress=check)

    def _evaluate_and_save(self, train_loss: float, tokens_per_s: float) -> bool:
        """Validate, save best.pt then last.pt, log; True when early stopping says stop."""
        at = self.position
        self._emit(Validating(at.step))
        at.pending_eval = {"train_loss": train_loss, "tokens_per_s": tokens_per_s}
        t0 = time.perf_counter()
        val = self.validate()
        self.eval_seconds = time.perf_counter() - t0
        self.last_val, at.evaluated_step, at.pending_eval = val, at.step, None
        nats = val["record"]["nats_per_char"]
        if not math.isfinite(nats):
            raise TrainingDiverged(f"the validation loss became {nats} at step {at.step}: lower --lr (now "
                                   f"{self.cfg.peak_lr:g}) or --clip; the run's checkpoints keep their last good state")
        improved = nats < at.best_val
        if improved:
            at.best_val, at.evals_since_best = nats, 0
            checkpoint.save(self.out / "best.pt", self.model, self.vocab, run_meta(self), tones=self.tones,
                            doubles=self.doubles)
        else:
            at.evals_since_best += 1
        self.save_last()
        self._emit(Validated(step=at.step, epoch=at.epoch, train_loss=train_loss, val_loss=nats,
                             val_bpc=val["record"]["bits_per_char"], val_ppl=val["record"]["perplexity"],
                             val_body_ppl=val["body"]["perplexity"], tokens_per_s=tokens_per_s,
                             elapsed_s=at.elapsed, best=improved, cell=self.model_config.cell,
                             hidden_size=self.model_config.hidden_size, num_layers=self.model_config.num_layers))
        return self.cfg.patience is not None and at.evals_since_best >= self.cfg.patience

    def run(self, on_step: Callable[[Trainer], None] | None = None) -> dict:
        """Train until the budget is spent or early stopping; return the summary. A stop signal
        (SIGINT, SIGTERM, SIGHUP) saves last.pt after the current step and raises TrainingInterrupted."""
        self.out.mkdir(parents=True, exist_ok=True)
        with run_lock(self.out), StopRequest() as stop:
            refuse_a_finished_run(self)
            self._stop = stop
            try:
                self._emit(started_event(self))
                return self._run(on_step, stop)
            finally:
                self._stop = None

    def _run(self, on_step, stop: StopRequest) -> dict:
        """A validation a stop signal cut short, then training, then a last validation unless the last
        step had one; last.pt saved and TrainingInterrupted on a stop signal."""
        self.model.train()
        at, now = self.position, time.perf_counter()
        meter = self._meter = Meter(origin=now - at.elapsed, since=now)
        if self._meter_carry:
            meter.loss_sum, meter.steps = float(self._meter_carry["loss_sum"]), int(self._meter_carry["steps"])
            self._meter_carry = None
        try:
            if at.pending_eval is not None:  # a stop signal cut this step's validation short
                meter.train_loss, meter.tokens_per_s = at.pending_eval["train_loss"], at.pending_eval["tokens_per_s"]
                self._evaluate_and_save(meter.train_loss, meter.tokens_per_s)
            stop_reason = self._train(meter, on_step, stop)
            if at.evaluated_step != at.step or self.last_val is None:
                meter.close_loss()
                self._evaluate_and_save(meter.train_loss, meter.tokens_per_s)
                at.elapsed = time.perf_counter() - meter.origin
        except KeyboardInterrupt:
            path = self.save_last()
            why = f"stopped by {stop.signal_name}" if stop.signal_name else "interrupted"
            raise TrainingInterrupted(f"{why} at step {at.step}; saved {path}. Resume with: "
                                      f"{self.resume_command()}") from None
        end = close_run(self, stop_reason, meter.train_loss)
        self._emit(end)
        return end.summary()

    def _train(self, meter: Meter, on_step, stop: StopRequest) -> str:
        """Train window after window until the budget is spent or early stopping says stop (the reason
        returned); KeyboardInterrupt on a stop signal, between steps."""
        at = self.position
        while True:
            if at.window >= self.windows_per_epoch:
                at.epoch, at.window = at.epoch + 1, 0
                at.hidden = at.teacher_hidden = None  # the states are reset at the epoch boundary
            stop_reason = out_of_budget(self)
            if stop_reason:
                return stop_reason
            if stop.signal_name:
                raise KeyboardInterrupt
            lr = self.lr_at(at.step, at.elapsed)
            loss, tokens = self._train_step(lr)
            meter.add(loss, tokens)
            now = time.perf_counter()
            at.elapsed = now - meter.origin
            report(self, meter, lr, now)
            if at.step % self.cfg.eval_every == 0 and self._evaluate_and_save(meter.train_loss, meter.tokens_per_s):
                return "early_stopping"
            if on_step:
                on_step(self)

    def _train_step(self, lr: float) -> tuple[float, int]:
        """One TBPTT window at rate `lr`: forward, backward, clip, update, the hidden state carried on
        (detached); (its loss, its tokens)."""
        at = self.position
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_data, at.window, self.cfg.bptt)  # (B, T) each
        teacher_hidden = None
        with autocast(self.device, self.cfg.precision):
            if self.teacher is None:
                loss, hidden = self.model.loss(x, y, at.hidden, self.negatives)
                objective = loss
            else:
                loss, objective, hidden, teacher_hidden = self._distillation_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the loss became {loss_value} at step {at.step + 1}: lower --lr (now {self.cfg.peak_lr:g}) "
                "or --clip; the run's checkpoints keep their last good state")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        at.hidden, at.teacher_hidden = detach_state(hidden), teacher_hidden
        at.step, at.window, at.tokens_seen = at.step + 1, at.window + 1, at.tokens_seen + x.numel()
        return loss_value, x.numel()

    def _distillation_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """(the cross entropy, the objective, the student's state, the teacher's state) of a window with a
        teacher: the objective is (1 - distill) x the cross entropy of the text + distill x KL(teacher ‖
        student), both per character (over the teacher's columns: the first of the run's vocabulary), the
        teacher's state carried on like the student's."""
        at, w = self.position, self.cfg.distill
        with torch.no_grad():
            teacher_logits, teacher_hidden = self.teacher(x, at.teacher_hidden)
            teacher_logp = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, 1)
        logits, hidden = self.model(x, at.hidden)
        logp = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)
        ce = F.nll_loss(logp, y.reshape(-1))
        kl = F.kl_div(logp[:, :teacher_logp.size(-1)], teacher_logp, reduction="batchmean", log_target=True)
        return ce, (1 - w) * ce + w * kl, hidden, teacher_hidden


# ---------------------------------------------------------------------------------------------
# What a run says of itself


def refuse_a_finished_run(trainer: Trainer) -> None:
    """UsageError for --resume of a run that had ended: nothing to train, and its log keeps one end."""
    at, cfg = trainer.position, trainer.cfg
    if at.step == 0 or at.pending_eval is not None or at.evaluated_step != at.step:
        return
    patience = cfg.patience is not None and at.evals_since_best >= cfg.patience
    if patience or out_of_budget(trainer):
        why = "early stopping ended it" if patience else "its budget is spent"
        more = "a larger --max-steps, --epochs or --max-minutes" + (" and --patience" if patience else "")
        raise UsageError(f"{trainer.out} is a finished run (step {at.step:,}; {why}): to train on, resume with "
                         f"{more}")


def started_event(trainer: Trainer) -> RunStarted:
    """The event that opens a run (or its resumed part)."""
    val, c, m = trainer.last_val, trainer.cfg, trainer.model_config
    return RunStarted(step=trainer.position.step, epoch=trainer.position.epoch, total_steps=trainer.total_steps,
                      stop_steps=trainer.stop_steps, max_minutes=c.max_minutes, eval_every=c.eval_every,
                      sampled_softmax=c.sampled_softmax, cell=m.cell, num_layers=m.num_layers,
                      hidden_size=m.hidden_size, device=str(trainer.device),
                      val_ppl=val["record"]["perplexity"] if val and "record" in val else None)


def close_run(trainer: Trainer, stop_reason: str, train_loss: float) -> RunEnded:
    """Close a run: a note when its budget bought no model; the event that ends it."""
    at, vocab = trainer.position, trainer.vocab
    if math.isfinite(at.best_val) and perplexity(at.best_val) > 0.25 * len(vocab):
        trainer._note(f"warning: this budget bought {at.step:,} steps and a val perplexity of "
                      f"{perplexity(at.best_val):,.0f}, near a uniform guess ({len(vocab):,}): the model "
                      "writes noise; give a larger --max-minutes or --max-steps, or --resume this run")
    return RunEnded(step=at.step, train_loss=train_loss, steps=at.step,
                    epochs=round(at.tokens_seen / max(1, trainer.train_data.numel()), 3),
                    tokens_seen=at.tokens_seen, elapsed_s=round(at.elapsed, 1),
                    tokens_per_s=round(at.tokens_seen / max(at.elapsed, 1e-9), 1),
                    best_val_loss=at.best_val, best_val_ppl=perplexity(at.best_val), last_val=trainer.last_val,
                    stop_reason=stop_reason, parameters=trainer.model.num_parameters(), out=str(trainer.out))


def out_of_budget(trainer: Trainer) -> str | None:
    """Why the run stops now ("budget", "time"), or None while it goes on."""
    c, at = trainer.cfg, trainer.position
    if trainer.stop_steps is not None and at.step >= trainer.stop_steps:
        return "budget"
    if c.epochs is not None and at.epoch >= c.epochs:
        return "budget"
    if c.max_minutes and at.elapsed + trainer.eval_seconds >= 60 * c.max_minutes:
        return "time"  # the final evaluation is counted in the budget
    return None


def report(trainer: Trainer, meter: Meter, lr: float, now: float) -> None:
    """A log line every log_every steps (and at each validation step), a tick at most every 0.5 s."""
    at = trainer.position
    if at.step % trainer.cfg.log_every == 0 or at.step % trainer.cfg.eval_every == 0:
        meter.close(now)
        trainer._emit(TrainLog(step=at.step, epoch=at.epoch, train_loss=meter.train_loss, lr=lr,
                            tokens_per_s=meter.tokens_per_s, elapsed_s=at.elapsed, total_steps=trainer.total_steps))
    elif now - meter.last_tick >= 0.5:  # signs of life between log lines
        meter.last_tick = now
        trainer._emit(Tick(step=at.step, epoch=at.epoch, train_loss=meter.mean_loss(), tokens_per_s=meter.rate(now),
                        elapsed_s=at.elapsed, total_steps=trainer.total_steps))
