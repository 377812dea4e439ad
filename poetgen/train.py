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
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .checkpoint import Checkpoint, ModelMeta
from .config import PRESETS, REGULARIZERS, ModelConfig, TrainConfig, warmup_steps_for
from .data import batchify, get_batch, num_windows
from .device import autocast, pick_device, use_bf16
from .errors import CheckpointError, PoetgenError, UsageError
from .evaluate import evaluate_stream, perplexity
from .events import Note, RunEnded, RunStarted, Tick, TrainEvent, TrainLog, Validated, Validating
from .model import LanguageModel, NegativeSampler, State, detach_state
from .paths import exclusive_lock
from .schedule import Schedule
from .text import finite
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
    """What `poetgen train` will do: a fresh run, a warm start, or a resume. The checkpoint a run
    starts from is read here, once, and handed on to the Trainer."""

    model_config: ModelConfig
    train_config: TrainConfig
    resume_from: Checkpoint | None = None  # --resume: the run's last.pt, for Trainer.resume
    init_checkpoint: Checkpoint | None = None  # --init-from: its checkpoint, for Trainer(init_checkpoint=...)


SHAPE_OPTIONS = ("cell", "emb_size", "hidden_size", "num_layers", "tie_weights")
DROPOUT_OPTIONS = REGULARIZERS


def plan_run(out: Path, vocab: Vocab, given: dict, resume: bool = False, preset: str | None = None) -> RunPlan:
    """Plan a run from the options the user gave (`given`: name → value, only those given).

    Model options are ModelConfig fields, the rest TrainConfig fields. A fresh run takes the preset's
    shape with the given overrides; --init-from takes the checkpoint's shape; --resume takes everything
    from last.pt and applies only the budget options (TrainConfig.RESUMABLE), refusing any other change."""
    last = out / "last.pt"
    for stale in out.glob(".*.pt.*.tmp"):  # a save cut short by a kill (the caller holds the run lock)
        stale.unlink(missing_ok=True)
    if resume:
        if not last.is_file() and (out / "best.pt").is_file():
            raise UsageError(f"{out} has best.pt but no last.pt (the run was killed while saving it first): start "
                             f"again from it with --init-from {out / 'best.pt'} and another --out")
        if not last.is_file():
            raise UsageError(f"nothing to resume in {out}: it has no last.pt; pass the --out of an earlier run, "
                             "or drop --resume")
        ckpt = checkpoint.read(last)
        train_config = checkpoint.train_config_of(ckpt)
        stored = {**asdict(train_config), **ckpt.config.to_dict(), "lr": train_config.peak_lr}
        if preset is not None and any(getattr(ckpt.config, k) != v for k, v in PRESETS[preset].items()
                                      if k in SHAPE_OPTIONS):
            raise UsageError(f"--preset {preset} is not this run's shape (the run keeps its own on --resume): "
                             "drop --preset")
        for name, value in given.items():
            if name in TrainConfig.RESUMABLE:
                setattr(train_config, name, value)
            elif stored.get(name, value) != value:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} cannot change on --resume (the run was started with {stored[name]}): "
                                 f"drop it, or start a new run from this one with --init-from {last}")
        return RunPlan(ckpt.config, train_config.validate(), resume_from=ckpt)
    if last.exists() or (out / "best.pt").exists():
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
        init_checkpoint = checkpoint.read(init_from)
        base = init_checkpoint.config.to_dict()
        train_given["init_from"] = str(init_from)
    else:
        init_checkpoint = None
        preset = preset or "small"
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    model_config = ModelConfig.from_dict({**base, **model_given, "vocab_size": len(vocab)})
    if "max_steps" in train_given and "epochs" not in train_given:
        train_given["epochs"] = None  # --max-steps alone sets the length of the run
    return RunPlan(model_config.validate(), TrainConfig(**train_given).validate(), init_checkpoint=init_checkpoint)


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
class _Meter:
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


# ---------------------------------------------------------------------------------------------
# The run's state


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


# ---------------------------------------------------------------------------------------------
# Setting a run up


def check_streams(train_stream: np.ndarray, val_stream: np.ndarray, batch_size: int) -> None:
    """UsageError when the splits are too small to train on or to validate."""
    if len(train_stream) < 2 * batch_size + 2:
        raise UsageError(f"train split of {len(train_stream)} tokens is too small for --batch-size {batch_size}: "
                         "lower it")
    if len(val_stream) < 4:
        raise UsageError("validation split is empty: prepare a larger corpus")


def warm_start(model: LanguageModel, ckpt: Checkpoint, vocab: Vocab, script: str | None) -> str | None:
    """Load another run's weights into `model` (fine-tuning, a second schedule): same shape and script
    (`script`: the corpus's). A model of another vocabulary (an older corpus build) lends the rows of
    the tokens both vocabularies hold, the others start from the mean of those rows
    (checkpoint.carry_vocab), and a note saying so is returned."""
    if ckpt.vocab.tokens == vocab.tokens:
        ckpt.require_shape(model.config, "drop the size options to take its shape")
        checkpoint.load_weights(model, ckpt.state_dict)
        return None
    ckpt.require_shape(replace(model.config, vocab_size=ckpt.config.vocab_size),
                       "drop the size options to take its shape")
    if ckpt.meta.script and script and ckpt.meta.script != script:
        raise UsageError(f"{ckpt.path} was trained on {ckpt.meta.script} text and this corpus is {script}: "
                         "prepare the corpus in its script, or start afresh")
    weights, shared = checkpoint.carry_vocab(ckpt.state_dict, ckpt.vocab, vocab, model.state_dict())
    checkpoint.load_weights(model, weights)
    return (f"{ckpt.path} has another vocabulary: {shared:,} of {len(vocab):,} tokens take its rows; "
            f"{len(vocab) - shared:,} new ones start from their mean")


def negative_sampler(train_stream: np.ndarray, negatives: int, vocab_size: int) -> NegativeSampler:
    """The sampler of a sampled softmax: `negatives` columns drawn by the train split's token counts."""
    counts = torch.bincount(torch.as_tensor(np.asarray(train_stream, dtype=np.int64)), minlength=vocab_size)
    return NegativeSampler(counts, negatives)


def sampled_softmax_warning(negatives: int, vocab_size: int) -> str | None:
    """A note when a sampled softmax would sample most of the vocabulary (and so hardly save time)."""
    if negatives < vocab_size // 2:
        return None
    return (f"--sampled-softmax {negatives:,} is not small against the vocabulary ({vocab_size:,}): the sampled "
            "set holds most columns, so training is barely faster; try 1024")


def make_optimizer(model: LanguageModel, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD at the peak rate, with weight decay on the matrices only (not on biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.99), fused=device.type == "cuda")
    return torch.optim.SGD(groups, lr=config.peak_lr)


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run writing into `out`: best.pt, last.pt and metrics.jsonl.

    `on_train_event` receives each typed event (poetgen.events) as it happens; `on_event` the same
    event as a dict, its metrics.jsonl record. `init_checkpoint` is the --init-from checkpoint already
    loaded (RunPlan.init_checkpoint); without it, the file train_config.init_from names is read."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, vocab: Vocab,
                 train_stream: np.ndarray, val_stream: np.ndarray, out: Path, corpus_meta: dict | None = None,
                 on_event: Callable[[dict], None] | None = None, tones: dict | None = None,
                 data_dir: Path | None = None, *, on_train_event: Callable[[TrainEvent], None] | None = None,
                 init_checkpoint: Checkpoint | None = None, doubles: dict | None = None):
        self.cfg = train_config.validate()
        self.model_config = model_config.validate()
        if model_config.vocab_size != len(vocab):
            raise UsageError(f"model vocabulary {model_config.vocab_size} differs from the corpus's {len(vocab)}")
        self.vocab = vocab
        self.tones = tones
        self.doubles = doubles  # the corpus's 叠字 table, stored with the tones (corpus.count_doubles)
        self.data_dir = data_dir  # named in the resume command
        self.out = Path(out)
        self.corpus_meta = corpus_meta or {}
        from . import __version__
        from .paths import source_commit

        self.software = {"poetgen": __version__, "torch": str(torch.__version__), "commit": source_commit()}
        self.on_event = on_event
        self.on_train_event = on_train_event
        self.device = pick_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.model = LanguageModel(model_config)
        if self.cfg.init_from:
            ckpt = init_checkpoint or checkpoint.read(self.cfg.init_from)
            self._note(warm_start(self.model, ckpt, vocab, self.corpus_meta.get("script")))
        self.model.to(self.device)
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
        # position and history: what RunState saves
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
        self._meter: _Meter | None = None  # while run() runs: what last.pt saves of the loss since the last log
        self._meter_carry: dict | None = None  # from last.pt on --resume
        self.eval_seconds = 0.0  # how long the last validation took

    @property
    def stop_steps(self) -> int | None:
        """The step the run stops at, by its current budget (None: time alone)."""
        by_epochs = self.cfg.epochs * self.windows_per_epoch if self.cfg.epochs else None
        options = [n for n in (self.cfg.max_steps, by_epochs) if n]
        return min(options) if options else None

    @property
    def total_steps(self) -> int:
        """Steps of the whole run as far as known (for progress displays)."""
        return self.stop_steps or self.schedule.total_steps or max(self.step, 1)

    def lr_at(self, step: int, elapsed: float) -> float:
        """The learning rate of `step`, `elapsed` seconds into the run, in the current epoch."""
        return self.schedule.lr(step, elapsed, self.epoch)

    # -- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> ModelMeta:
        """What the run's checkpoints record about it now."""
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
            software=self.software,
            poets=self.corpus_meta.get("poets"),
        )

    def run_state(self) -> RunState:
        """Where the run stands now, as last.pt saves it."""
        hidden = None
        if self.state is not None:
            hidden = [s.cpu() for s in (self.state if isinstance(self.state, tuple) else (self.state,))]
        return RunState(step=self.step, epoch=self.epoch, window=self.window, hidden=hidden,
                        tokens_seen=self.tokens_seen, elapsed=self.elapsed, best_val=self.best_val,
                        evals_since_best=self.evals_since_best, evaluated_step=self.evaluated_step,
                        pending_eval=self.pending_eval, train_config=asdict(self.cfg),
                        schedule_steps=self.schedule.total_steps, schedule_minutes=self.schedule.total_minutes,
                        optimizer=self.optimizer.state_dict(), rng=_rng_state(self.device),
                        meter={"loss_sum": self._meter.loss_sum, "steps": self._meter.steps}
                        if self._meter is not None and self._meter.steps else None)

    def save_last(self) -> Path:
        """Write last.pt: the weights and the run's state, everything --resume needs. Weights that are
        not finite numbers are never saved (TrainingDiverged): the file keeps its last good state."""
        path = self.out / "last.pt"
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingDiverged(f"the weights became infinite or NaN by step {self.step}: lower --lr (now "
                                   f"{self.cfg.peak_lr:g}) or --clip; the run's checkpoints keep their last good state")
        checkpoint.save(path, self.model, self.vocab, self.meta(), tones=self.tones, doubles=self.doubles,
                        train_state=self.run_state().to_dict())
        return path

    def resume(self, last: Path | Checkpoint) -> None:
        """Restore everything from last.pt (its path, or the checkpoint plan_run loaded:
        RunPlan.resume_from) so training continues as if never stopped."""
        ckpt = last if isinstance(last, Checkpoint) else checkpoint.read(last)
        checkpoint.train_config_of(ckpt)
        if ckpt.config != self.model_config:
            raise UsageError(f"{ckpt.path} was trained with another model shape: drop the size options or --resume")
        ckpt.require_vocab(self.vocab, "rebuild that corpus or start afresh")
        self._restore(RunState.from_dict(ckpt.train_state, ckpt.path), ckpt)
        self.last_val = ckpt.meta.val

    def _restore(self, saved: RunState, ckpt: Checkpoint) -> None:
        """Take the weights of `ckpt` and the position, history, optimizer, RNG and schedule of `saved`."""
        try:
            checkpoint.load_weights(self.model, ckpt.state_dict)
            self.optimizer.load_state_dict(saved.optimizer)
            _set_rng_state(saved.rng, self.device)
            if saved.hidden is None:
                self.state = None
            elif self.model_config.cell == "lstm":
                self.state = tuple(h.to(self.device) for h in saved.hidden)
            else:
                self.state = saved.hidden[0].to(self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError):
            raise PoetgenError(f"{ckpt.path} has a damaged training state: resume from another copy, or start "
                               f"a new run with --init-from {ckpt.path}") from None
        self.step, self.epoch, self.window = saved.step, saved.epoch, saved.window
        self.tokens_seen, self.elapsed = saved.tokens_seen, saved.elapsed
        self.best_val, self.evals_since_best = saved.best_val, saved.evals_since_best
        self.evaluated_step, self.pending_eval = saved.evaluated_step, saved.pending_eval
        self._meter_carry = saved.meter if isinstance(saved.meter, dict) else None
        self.schedule = replace(self.schedule, total_steps=saved.schedule_steps,
                                total_minutes=saved.schedule_minutes)

    def resume_command(self) -> str:
        """The command that continues this run."""
        parts = ["poetgen", "train", "--out", str(self.out), "--resume"]
        if self.data_dir is not None:
            parts += ["--data-dir", str(self.data_dir)]
        return " ".join(shlex.quote(p) for p in parts)

    # -- events --------------------------------------------------------------------------------
    def _emit(self, event: TrainEvent) -> None:
        """Log `event` to metrics.jsonl (the kinds logged there) and pass it to the callbacks."""
        record = event.record()
        if event.logged:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(finite(record), allow_nan=False) + "\n")
        if self.on_event:
            self.on_event(record)
        if self.on_train_event:
            self.on_train_event(event)

    def _note(self, message: str | None) -> None:
        if message:
            self._emit(Note(message))

    def _started(self) -> RunStarted:
        val = self.last_val
        return RunStarted(step=self.step, epoch=self.epoch, total_steps=self.total_steps, stop_steps=self.stop_steps,
                          max_minutes=self.cfg.max_minutes, eval_every=self.cfg.eval_every,
                          sampled_softmax=self.cfg.sampled_softmax, cell=self.model_config.cell,
                          num_layers=self.model_config.num_layers, hidden_size=self.model_config.hidden_size,
                          device=str(self.device),
                          val_ppl=val["record"]["perplexity"] if val and "record" in val else None)

    def _report(self, meter: _Meter, lr: float, now: float) -> None:
        """A log line every log_every steps (and at each validation step), a tick at most every 0.5 s."""
        if self.step % self.cfg.log_every == 0 or self.step % self.cfg.eval_every == 0:
            meter.close(now)
            self._emit(TrainLog(step=self.step, epoch=self.epoch, train_loss=meter.train_loss, lr=lr,
                                tokens_per_s=meter.tokens_per_s, elapsed_s=self.elapsed, total_steps=self.total_steps))
        elif now - meter.last_tick >= 0.5:  # signs of life between log lines
            meter.last_tick = now
            self._emit(Tick(step=self.step, epoch=self.epoch, train_loss=meter.mean_loss(),
                            tokens_per_s=meter.rate(now), elapsed_s=self.elapsed, total_steps=self.total_steps))

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
        self._emit(Validating(self.step))
        self.pending_eval = {"train_loss": train_loss, "tokens_per_s": tokens_per_s}
        t0 = time.perf_counter()
        val = self.validate()
        self.eval_seconds = time.perf_counter() - t0
        self.last_val = val
        self.evaluated_step = self.step
        self.pending_eval = None
        nats = val["record"]["nats_per_char"]
        if not math.isfinite(nats):
            raise TrainingDiverged(f"the validation loss became {nats} at step {self.step}: lower --lr (now "
                                   f"{self.cfg.peak_lr:g}) or --clip; the run's checkpoints keep their last good state")
        improved = nats < self.best_val
        if improved:
            self.best_val = nats
            self.evals_since_best = 0
            checkpoint.save(self.out / "best.pt", self.model, self.vocab, self.meta(), tones=self.tones,
                            doubles=self.doubles)
        else:
            self.evals_since_best += 1
        self.save_last()
        self._emit(Validated(step=self.step, epoch=self.epoch, train_loss=train_loss, val_loss=nats,
                             val_bpc=val["record"]["bits_per_char"], val_ppl=val["record"]["perplexity"],
                             val_body_ppl=val["body"]["perplexity"], tokens_per_s=tokens_per_s,
                             elapsed_s=self.elapsed, best=improved, cell=self.model_config.cell,
                             hidden_size=self.model_config.hidden_size, num_layers=self.model_config.num_layers))
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
            self._refuse_a_finished_run()
            self._stop = stop
            try:
                self._emit(self._started())
                return self._run(on_step, stop)
            finally:
                self._stop = None

    def _refuse_a_finished_run(self) -> None:
        """UsageError for --resume of a run that had ended: nothing to train, and its log keeps one end."""
        if self.step == 0 or self.pending_eval is not None or self.evaluated_step != self.step:
            return
        patience = self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience
        if patience or self._out_of_budget():
            why = "early stopping ended it" if patience else "its budget is spent"
            more = "a larger --max-steps, --epochs or --max-minutes" + (" and --patience" if patience else "")
            raise UsageError(f"{self.out} is a finished run (step {self.step:,}; {why}): to train on, resume with "
                             f"{more}")

    def _run(self, on_step, stop: _StopRequest) -> dict:
        """A validation a stop signal cut short, then training, then a last validation unless the last
        step had one; last.pt saved and TrainingInterrupted on a stop signal."""
        self.model.train()
        now = time.perf_counter()
        meter = self._meter = _Meter(origin=now - self.elapsed, since=now)
        if self._meter_carry:
            meter.loss_sum, meter.steps = float(self._meter_carry["loss_sum"]), int(self._meter_carry["steps"])
            self._meter_carry = None
        try:
            if self.pending_eval is not None:  # a stop signal cut this step's validation short
                meter.train_loss, meter.tokens_per_s = (self.pending_eval["train_loss"],
                                                        self.pending_eval["tokens_per_s"])
                self._evaluate_and_save(meter.train_loss, meter.tokens_per_s)
            stop_reason = self._train(meter, on_step, stop)
            if self.evaluated_step != self.step or self.last_val is None:
                meter.close_loss()
                self._evaluate_and_save(meter.train_loss, meter.tokens_per_s)
                self.elapsed = time.perf_counter() - meter.origin
        except KeyboardInterrupt:
            path = self.save_last()
            why = f"stopped by {stop.signal_name}" if stop.signal_name else "interrupted"
            raise TrainingInterrupted(f"{why} at step {self.step}; saved {path}. Resume with: "
                                      f"{self.resume_command()}") from None
        return self._finish(stop_reason, meter.train_loss)

    def _train(self, meter: _Meter, on_step, stop: _StopRequest) -> str:
        """Train window after window until the budget is spent or early stopping says stop (the reason
        returned); KeyboardInterrupt on a stop signal, between steps."""
        while True:
            if self.window >= self.windows_per_epoch:
                self.epoch += 1
                self.window = 0
                self.state = None  # reset at the epoch boundary
            stop_reason = self._out_of_budget()
            if stop_reason:
                return stop_reason
            if stop.signal_name:
                raise KeyboardInterrupt
            lr = self.lr_at(self.step, self.elapsed)
            loss, tokens = self._train_step(lr)
            meter.add(loss, tokens)
            now = time.perf_counter()
            self.elapsed = now - meter.origin
            self._report(meter, lr, now)
            if self.step % self.cfg.eval_every == 0 and self._evaluate_and_save(meter.train_loss, meter.tokens_per_s):
                return "early_stopping"
            if on_step:
                on_step(self)

    def _train_step(self, lr: float) -> tuple[float, int]:
        """One TBPTT window at rate `lr`: forward, backward, clip, update, the hidden state carried on
        (detached); (its loss, its tokens)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_data, self.window, self.cfg.bptt)  # (B, T) each
        with autocast(self.device, self.cfg.precision):
            loss, state = self.model.loss(x, y, self.state, self.negatives)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the loss became {loss_value} at step {self.step + 1}: lower --lr (now {self.cfg.peak_lr:g}) "
                "or --clip; the run's checkpoints keep their last good state")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        self.state = detach_state(state)
        self.step += 1
        self.window += 1
        self.tokens_seen += x.numel()
        return loss_value, x.numel()

    def _finish(self, stop_reason: str, train_loss: float) -> dict:
        """Log the end of the run (and say so when its budget bought no model); its summary."""
        if math.isfinite(self.best_val) and perplexity(self.best_val) > 0.25 * len(self.vocab):
            self._note(f"warning: this budget bought {self.step:,} steps and a val perplexity of "
                       f"{perplexity(self.best_val):,.0f}, near a uniform guess ({len(self.vocab):,}): the model "
                       "writes noise; give a larger --max-minutes or --max-steps, or --resume this run")
        end = RunEnded(step=self.step, train_loss=train_loss, steps=self.step,
                       epochs=round(self.tokens_seen / max(1, self.train_data.numel()), 3),
                       tokens_seen=self.tokens_seen, elapsed_s=round(self.elapsed, 1),
                       tokens_per_s=round(self.tokens_seen / max(self.elapsed, 1e-9), 1),
                       best_val_loss=self.best_val, best_val_ppl=perplexity(self.best_val), last_val=self.last_val,
                       stop_reason=stop_reason, parameters=self.model.num_parameters(), out=str(self.out))
        self._emit(end)
        return end.summary()


__all__ = ["RunPlan", "RunState", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "plan_run"]
