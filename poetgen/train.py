"""The training loop: stateful truncated BPTT, global-norm clipping, AdamW with warmup and cosine
decay (or Zaremba-style SGD with step decay), periodic validation, best/last checkpoints and an
exact resume; and the planning of a run from what the user asked for."""

from __future__ import annotations

import json
import math
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .checkpoint import ModelMeta
from .config import PRESETS, REGULARIZERS, ModelConfig, TrainConfig
from .data import batchify, get_batch, num_windows
from .device import autocast, pick_device, use_bf16
from .errors import PoetgenError, UsageError
from .evaluate import evaluate_stream
from .model import LanguageModel, NegativeSampler, State, detach_state
from .paths import exclusive_lock
from .vocab import Vocab

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, schedulers, a closed terminal


class TrainingInterrupted(PoetgenError):
    """A stop signal during training: last.pt was saved; the message tells how to resume."""

    exit_code = 130


class TrainingDiverged(PoetgenError):
    """The loss became NaN or infinite: the run stops before saving garbage."""


class RunLocked(PoetgenError):
    """Another process trains into the same folder."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------
# Planning a run


@dataclass
class RunPlan:
    """What `poetgen train` will do: a fresh run, a warm start, or a resume."""

    model_config: ModelConfig
    train_config: TrainConfig
    resume_from: Path | None = None


SHAPE_OPTIONS = ("cell", "emb_size", "hidden_size", "num_layers", "tie_weights")
DROPOUT_OPTIONS = REGULARIZERS


def plan_run(out: Path, vocab: Vocab, given: dict, resume: bool = False, preset: str | None = None) -> RunPlan:
    """Plan a run from the options the user gave (`given`: name → value, only those given).

    Model options are ModelConfig fields, the rest TrainConfig fields. A fresh run takes the preset's
    shape with the given overrides; --init-from takes the checkpoint's shape; --resume takes everything
    from last.pt and applies only the budget options (TrainConfig.RESUMABLE), refusing any other change."""
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            raise UsageError(f"nothing to resume in {out}: it has no last.pt; pass the --out of an earlier run, "
                             "or drop --resume")
        ckpt = checkpoint.read(last)
        train_config = checkpoint.train_config_of(ckpt)
        stored = {**asdict(train_config), **ckpt.config.to_dict(), "lr": train_config.peak_lr}
        if preset is not None:
            raise UsageError("--preset cannot change on --resume (the run keeps its shape): drop it")
        for name, value in given.items():
            if name in TrainConfig.RESUMABLE:
                setattr(train_config, name, value)
            elif stored.get(name, value) != value:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} cannot change on --resume (the run was started with {stored[name]}): "
                                 f"drop it, or start a new run from this one with --init-from {last}")
        return RunPlan(ckpt.config, train_config.validate(), last)
    if last.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    model_given = {k: v for k, v in given.items() if k in SHAPE_OPTIONS + DROPOUT_OPTIONS}
    train_given = {k: v for k, v in given.items() if k not in model_given}
    init_from = train_given.get("init_from")
    if init_from is not None:
        shape_flags = [k for k in model_given if k in SHAPE_OPTIONS]
        if shape_flags or preset is not None:
            raise UsageError("--init-from takes the model's shape from the checkpoint: drop --preset, --cell, "
                             "--emb-size, --hidden-size, --layers and --untied")
        path = Path(init_from)
        if path.is_dir():
            raise UsageError(f"--init-from {path} is a folder: pass a checkpoint file (e.g. {path}/best.pt)")
        if not path.exists():
            raise UsageError(f"--init-from {path}: no such file: pass a checkpoint (e.g. runs/NAME/best.pt)")
        base = checkpoint.read(init_from).config.to_dict()
        train_given["init_from"] = str(init_from)
    else:
        preset = preset or "small"
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    model_config = ModelConfig.from_dict({**base, **model_given, "vocab_size": len(vocab)})
    if "max_steps" in train_given and "epochs" not in train_given:
        train_given["epochs"] = None  # --max-steps alone sets the length of the run
    return RunPlan(model_config.validate(), TrainConfig(**train_given).validate())


# ---------------------------------------------------------------------------------------------
# Helpers


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def run_lock(out: Path):
    """Hold an exclusive lock on `out` for the whole run; RunLocked when another process holds it."""
    return exclusive_lock(out, RunLocked(f"another `poetgen train` is writing into {out}: wait for it, or choose "
                                         "another --out"))


class _StopRequest:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the loop checks between steps, so the state saved is
    always that of a finished step. A second signal stops at once (last.pt keeps the last save)."""

    def __init__(self):
        self.signal_name: str | None = None
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
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run writing into `out`: best.pt, last.pt and metrics.jsonl."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, vocab: Vocab,
                 train_stream: np.ndarray, val_stream: np.ndarray, out: Path, corpus_meta: dict | None = None,
                 on_event: Callable[[dict], None] | None = None, tones: dict | None = None,
                 data_dir: Path | None = None):
        self.cfg = train_config.validate()
        self.model_config = model_config.validate()
        if model_config.vocab_size != len(vocab):
            raise UsageError(f"model vocabulary {model_config.vocab_size} differs from the corpus's {len(vocab)}")
        self.vocab = vocab
        self.tones = tones
        self.data_dir = data_dir  # named in the resume command
        self.out = Path(out)
        self.corpus_meta = corpus_meta or {}
        self.on_event = on_event
        self.device = pick_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.model = LanguageModel(model_config)
        if self.cfg.init_from:
            self._warm_start(Path(self.cfg.init_from))
        self.model.to(self.device)
        use_bf16(self.device, self.cfg.precision)  # a precision the device lacks fails here, not mid-run
        if len(train_stream) < 2 * self.cfg.batch_size + 2:
            raise UsageError(f"train split of {len(train_stream)} tokens is too small for --batch-size "
                             f"{self.cfg.batch_size}: lower it")
        if len(val_stream) < 4:
            raise UsageError("validation split is empty: prepare a larger corpus")
        self.train_data = batchify(train_stream, self.cfg.batch_size).to(self.device)
        self.negatives = None
        if self.cfg.sampled_softmax:
            counts = torch.bincount(torch.as_tensor(np.asarray(train_stream, dtype=np.int64)),
                                    minlength=model_config.vocab_size)
            self.negatives = NegativeSampler(counts, self.cfg.sampled_softmax).to(self.device)
            if self.cfg.sampled_softmax >= model_config.vocab_size // 2:
                self._emit({"event": "note", "message": f"--sampled-softmax {self.cfg.sampled_softmax:,} is not "
                            f"small against the vocabulary ({model_config.vocab_size:,}): the sampled set holds "
                            "most columns, so training is barely faster; try 1024"}, log=False)
        self.val_stream = np.asarray(val_stream, dtype=np.int64)
        self.windows_per_epoch = num_windows(self.train_data, self.cfg.bptt)
        # the schedule is fixed here; on --resume it comes from last.pt
        self.schedule_steps = self._schedule_steps()
        self.schedule_minutes = self.cfg.max_minutes
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.peak_lr, betas=(0.9, 0.99),
                                               fused=self.device.type == "cuda")
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.cfg.peak_lr)
        # position and history
        self.step = 0
        self.epoch = 0
        self.window = 0
        self.state: State = None
        self.best_val = math.inf
        self.evals_since_best = 0
        self.elapsed = 0.0
        self.tokens_seen = 0
        self.last_val: dict | None = None
        self.evaluated_step: int | None = None  # the step of the last finished validation
        self.pending_eval: dict | None = None  # a validation a stop signal cut short: redone on --resume
        self._stop: _StopRequest | None = None  # while run() runs
        self.eval_seconds = 0.0  # how long the last validation took

    def _schedule_steps(self) -> int | None:
        """Steps the learning-rate schedule spans (None: it follows max_minutes alone)."""
        by_epochs = self.cfg.epochs * self.windows_per_epoch if self.cfg.epochs else None
        options = [n for n in (self.cfg.max_steps, by_epochs) if n]
        return min(options) if options else None

    @property
    def stop_steps(self) -> int | None:
        """The step the run stops at, by its current budget (None: time alone)."""
        return self._schedule_steps()

    @property
    def total_steps(self) -> int:
        """Steps of the whole run as far as known (for progress displays)."""
        return self.stop_steps or self.schedule_steps or max(self.step, 1)

    def _warm_start(self, path: Path) -> None:
        """Start from another run's weights (fine-tuning, a second schedule): same shape and script.
        A model of another vocabulary (an older corpus build) lends the rows of the characters both
        vocabularies hold; the others keep their fresh initialization."""
        ckpt = checkpoint.read(path)
        if ckpt.vocab.tokens == self.vocab.tokens:
            ckpt.require_shape(self.model_config, "drop the size options to take its shape")
            checkpoint.load_weights(self.model, ckpt.state_dict)
            return
        ckpt.require_shape(replace(self.model_config, vocab_size=ckpt.config.vocab_size),
                           "drop the size options to take its shape")
        script = self.corpus_meta.get("script")
        if ckpt.meta.script and script and ckpt.meta.script != script:
            raise UsageError(f"{path} was trained on {ckpt.meta.script} text and this corpus is {script}: "
                             "prepare the corpus in its script, or start afresh")
        weights, shared = checkpoint.carry_vocab(ckpt.state_dict, ckpt.vocab, self.vocab, self.model.state_dict())
        checkpoint.load_weights(self.model, weights)
        self._emit({"event": "note", "message": f"{path} has another vocabulary: {shared:,} of "
                    f"{len(self.vocab):,} tokens take its rows, the rest start fresh"}, log=False)

    # -- schedule ------------------------------------------------------------------------------
    def lr_at(self, step: int, elapsed: float) -> float:
        c = self.cfg
        if c.optimizer == "sgd":
            return c.peak_lr * c.lr_decay ** max(0, self.epoch - c.decay_after + 1)
        if step < c.warmup_steps:
            return c.peak_lr * (step + 1) / c.warmup_steps
        progress = 0.0
        if self.schedule_steps:
            progress = (step - c.warmup_steps) / max(1, self.schedule_steps - c.warmup_steps)
        if self.schedule_minutes:
            progress = max(progress, elapsed / (60 * self.schedule_minutes))
        progress = min(1.0, progress)
        return c.peak_lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # -- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> ModelMeta:
        return ModelMeta(
            script=self.corpus_meta.get("script"),
            corpus_hash=self.corpus_meta.get("corpus_hash"),
            corpus_source=self.corpus_meta.get("source"),
            step=self.step,
            epoch=self.epoch,
            tokens_seen=self.tokens_seen,
            elapsed_s=round(self.elapsed, 1),
            best_val_loss=None if math.isinf(self.best_val) else self.best_val,
            val=self.last_val,
            train_config=asdict(self.cfg),
            device=str(self.device),
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def train_state(self) -> dict:
        state = None
        if self.state is not None:
            state = [s.cpu() for s in (self.state if isinstance(self.state, tuple) else (self.state,))]
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(self.device),
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "hidden": state,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
            "evaluated_step": self.evaluated_step,
            "pending_eval": self.pending_eval,
            "train_config": asdict(self.cfg),
            "schedule_steps": self.schedule_steps,
            "schedule_minutes": self.schedule_minutes,
        }

    def save_last(self) -> Path:
        path = self.out / "last.pt"
        checkpoint.save(path, self.model, self.vocab, self.meta(), tones=self.tones, train_state=self.train_state())
        return path

    def resume(self, path: Path) -> None:
        """Restore everything from last.pt so training continues as if never stopped."""
        ckpt = checkpoint.read(path)
        checkpoint.train_config_of(ckpt)
        if ckpt.config != self.model_config:
            raise UsageError(f"{path} was trained with another model shape: drop the size options or --resume")
        ckpt.require_vocab(self.vocab, "rebuild that corpus or start afresh")
        ts = ckpt.train_state
        try:
            checkpoint.load_weights(self.model, ckpt.state_dict)
            self.optimizer.load_state_dict(ts["optimizer"])
            _set_rng_state(ts["rng"], self.device)
            self.step, self.epoch, self.window = ts["step"], ts["epoch"], ts["window"]
            hidden = ts["hidden"]
            if hidden is None:
                self.state = None
            elif self.model_config.cell == "lstm":
                self.state = tuple(h.to(self.device) for h in hidden)
            else:
                self.state = hidden[0].to(self.device)
            self.best_val = ts["best_val"]
            self.evals_since_best = ts["evals_since_best"]
            self.elapsed = ts["elapsed"]
            self.tokens_seen = ts["tokens_seen"]
            self.evaluated_step = ts.get("evaluated_step", self.step)  # older runs: as if validated
            self.pending_eval = ts.get("pending_eval")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError):
            raise PoetgenError(f"{path} has a damaged training state: resume from another copy, or start "
                               f"a new run with --init-from {path}") from None
        if "schedule_steps" in ts:  # the schedule the run started with (poetgen 0.1 refitted it)
            self.schedule_steps = ts["schedule_steps"]
            self.schedule_minutes = ts["schedule_minutes"]
        self.last_val = ckpt.meta.val

    def resume_command(self) -> str:
        """The command that continues this run."""
        parts = ["poetgen", "train", "--out", str(self.out), "--resume"]
        if self.data_dir is not None:
            parts += ["--data-dir", str(self.data_dir)]
        return " ".join(shlex.quote(p) for p in parts)

    # -- loop ----------------------------------------------------------------------------------
    def _emit(self, event: dict, log: bool = True) -> None:
        event = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in event.items()}
        if log:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
        if self.on_event:
            self.on_event(event)

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
        self._emit({"event": "evaluating", "step": self.step}, log=False)
        self.pending_eval = {"train_loss": train_loss, "tokens_per_s": tokens_per_s}
        t0 = time.perf_counter()
        val = self.validate()
        self.eval_seconds = time.perf_counter() - t0
        self.last_val = val
        self.evaluated_step = self.step
        self.pending_eval = None
        nats = val["record"]["nats_per_char"]
        improved = nats < self.best_val
        if improved:
            self.best_val = nats
            self.evals_since_best = 0
            checkpoint.save(self.out / "best.pt", self.model, self.vocab, self.meta(), tones=self.tones)
        else:
            self.evals_since_best += 1
        self.save_last()
        self._emit({"event": "eval", "step": self.step, "epoch": self.epoch, "train_loss": train_loss,
                    "val_loss": nats, "val_bpc": val["record"]["bits_per_char"],
                    "val_ppl": val["record"]["perplexity"], "val_body_ppl": val["body"]["perplexity"],
                    "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed, "best": improved,
                    "cell": self.model_config.cell, "hidden_size": self.model_config.hidden_size,
                    "num_layers": self.model_config.num_layers})
        return self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience

    def _out_of_budget(self) -> str | None:
        c = self.cfg
        if self.stop_steps is not None and self.step >= self.stop_steps:
            return "budget"
        if c.epochs is not None and self.epoch >= c.epochs:
            return "budget"
        if c.max_minutes and self.elapsed + self.eval_seconds >= 60 * c.max_minutes:
            return "time"  # the final evaluation is counted in the budget
        return None

    def run(self, on_step: Callable[[Trainer], None] | None = None) -> dict:
        """Train until the budget is spent or early stopping; return the summary. A stop signal
        (SIGINT, SIGTERM, SIGHUP) saves last.pt after the current step and raises TrainingInterrupted."""
        self.out.mkdir(parents=True, exist_ok=True)
        with run_lock(self.out), _StopRequest() as stop:
            self._stop = stop
            try:
                self._emit({"event": "start", "step": self.step}, log=False)
                return self._run(on_step, stop)
            finally:
                self._stop = None

    def _run(self, on_step, stop: _StopRequest) -> dict:
        c = self.cfg
        self.model.train()
        t_start = time.perf_counter() - self.elapsed
        t_window, tokens_window, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        last_tick = 0.0
        train_loss = math.nan
        tokens_per_s = 0.0
        stop_reason = None
        try:
            if self.pending_eval is not None:  # a stop signal cut this step's validation short
                train_loss, tokens_per_s = self.pending_eval["train_loss"], self.pending_eval["tokens_per_s"]
                self._evaluate_and_save(train_loss, tokens_per_s)
            while True:
                if self.window >= self.windows_per_epoch:
                    self.epoch += 1
                    self.window = 0
                    self.state = None  # reset at the epoch boundary
                stop_reason = self._out_of_budget()
                if stop_reason:
                    break
                if stop.signal_name:
                    raise KeyboardInterrupt
                lr = self.lr_at(self.step, self.elapsed)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x, y = get_batch(self.train_data, self.window, c.bptt)
                with autocast(self.device, c.precision):
                    loss, state = self.model.loss(x, y, self.state, self.negatives)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"the loss became {loss_value} at step {self.step + 1}: lower --lr (now {c.peak_lr:g}) "
                        "or --clip; the run's checkpoints keep their last good state")
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
                self.optimizer.step()
                self.state = detach_state(state)
                self.step += 1
                self.window += 1
                self.tokens_seen += x.numel()
                tokens_window += x.numel()
                loss_sum += loss_value
                loss_n += 1
                now = time.perf_counter()
                self.elapsed = now - t_start
                if self.step % c.log_every == 0 or self.step % c.eval_every == 0:
                    tokens_per_s = tokens_window / max(now - t_window, 1e-9)
                    train_loss = loss_sum / loss_n
                    t_window, tokens_window, loss_sum, loss_n = now, 0, 0.0, 0
                    self._emit({"event": "log", "step": self.step, "epoch": self.epoch, "train_loss": train_loss,
                                "lr": lr, "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed,
                                "total_steps": self.total_steps})
                elif now - last_tick >= 0.5:  # signs of life between log lines
                    last_tick = now
                    rate = tokens_window / max(now - t_window, 1e-9)
                    self._emit({"event": "tick", "step": self.step, "epoch": self.epoch,
                                "train_loss": loss_sum / loss_n, "tokens_per_s": rate, "elapsed_s": self.elapsed,
                                "total_steps": self.total_steps}, log=False)
                if self.step % c.eval_every == 0 and self._evaluate_and_save(train_loss, tokens_per_s):
                    stop_reason = "early_stopping"
                    break
                if on_step:
                    on_step(self)
            if self.evaluated_step != self.step or self.last_val is None:
                if loss_n:
                    train_loss = loss_sum / loss_n
                self._evaluate_and_save(train_loss, tokens_per_s)
                self.elapsed = time.perf_counter() - t_start
        except KeyboardInterrupt:
            path = self.save_last()
            why = f"stopped by {stop.signal_name}" if stop.signal_name else "interrupted"
            raise TrainingInterrupted(f"{why} at step {self.step}; saved {path}. Resume with: "
                                      f"{self.resume_command()}") from None
        summary = {
            "steps": self.step,
            "epochs": round(self.tokens_seen / max(1, self.train_data.numel()), 3),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed, 1),
            "tokens_per_s": round(self.tokens_seen / max(self.elapsed, 1e-9), 1),
            "best_val_loss": self.best_val,
            "best_val_ppl": math.exp(self.best_val),
            "last_val": self.last_val,
            "stop_reason": stop_reason or "budget",
            "parameters": self.model.num_parameters(),
            "out": str(self.out),
        }
        self._emit({"event": "end", "step": self.step, "train_loss": train_loss, **summary})
        return summary


__all__ = ["RunPlan", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "plan_run"]
