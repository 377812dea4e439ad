"""The training loop: stateful truncated BPTT, global-norm clipping, AdamW with warmup and cosine
decay (or Zaremba-style SGD with step decay), periodic validation, best/last checkpoints and an
exact resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .data import batchify, get_batch, num_windows
from .errors import PoetgenError, UsageError
from .model import LanguageModel, LSTMConfig, State, detach_state
from .vocab import Vocab

LN2 = math.log(2)


class TrainingInterrupted(PoetgenError):
    """Ctrl-C during training: last.pt was saved; the message tells how to resume."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Everything about a run but the model's shape; stored in last.pt for --resume."""

    batch_size: int = 64
    bptt: int = 64
    epochs: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    lr_decay: float = 0.5  # sgd: multiply the rate by this every epoch after decay_after
    decay_after: int = 4
    clip: float = 1.0
    eval_every: int = 500
    eval_batch_size: int = 16
    patience: int | None = None
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    init_from: str | None = None  # warm start: weights from this checkpoint, fresh optimizer and schedule
    log_every: int = 50

    def validate(self) -> TrainConfig:
        for name in ("batch_size", "bptt", "epochs", "eval_every", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UsageError(f"unknown optimizer {self.optimizer!r}: choose adamw or sgd")
        if self.lr <= 0 or self.clip <= 0:
            raise UsageError("--lr and --clip must be positive")
        if self.patience is not None and self.patience < 1:
            raise UsageError("--patience must be at least 1")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def pick_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu unless `name` forces one."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is available: use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps but MPS is not available: use --device cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to run matrix work in bf16 (weights and optimizer stay fp32). `auto` means CUDA only;
    `bf16` on a CPU pays off where it has bf16 instructions (AVX512-BF16, AMX)."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise UsageError(f"--precision bf16 is not supported on {device.type}: use --precision fp32")
        return True
    return device.type == "cuda"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast when use_bf16 says so, a no-op otherwise."""
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16,
                          enabled=use_bf16(device, precision))


@torch.inference_mode()
def evaluate_stream(model: LanguageModel, stream: np.ndarray | torch.Tensor, device: torch.device,
                    rows: int = 16, bptt: int = 128, precision: str = "auto") -> tuple[float, int]:
    """Total next-token loss in nats and the number of predicted tokens over a token stream,
    carrying the state across windows as training does."""
    was_training = model.training
    model.eval()
    rows = max(1, min(rows, (len(stream) - 1) // 2))
    batched = batchify(stream, rows).to(device)
    total, count, state = 0.0, 0, None
    for i in range(num_windows(batched, bptt)):
        x, y = get_batch(batched, i, bptt)
        with autocast(device, precision):
            logits, state = model(x, state)
        total += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    model.train(was_training)
    return total, count


def metrics_from_loss(nats: float) -> dict:
    return {"nats_per_char": nats, "bits_per_char": nats / LN2, "perplexity": math.exp(min(nats, 50.0))}


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """One training run writing into `out`: best.pt, last.pt and metrics.jsonl."""

    def __init__(self, model_config: LSTMConfig, train_config: TrainConfig, vocab: Vocab,
                 train_stream: np.ndarray, val_stream: np.ndarray, out: Path, corpus_meta: dict | None = None,
                 on_event: Callable[[dict], None] | None = None):
        self.cfg = train_config.validate()
        self.model_config = model_config.validate()
        if model_config.vocab_size != len(vocab):
            raise UsageError(f"model vocabulary {model_config.vocab_size} differs from the corpus's {len(vocab)}")
        self.vocab = vocab
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
        self.val_stream = val_stream
        self.windows_per_epoch = num_windows(self.train_data, self.cfg.bptt)
        self.total_steps = self.cfg.max_steps or self.cfg.epochs * self.windows_per_epoch
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.99),
                                               fused=self.device.type == "cuda")
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr)
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

    def _warm_start(self, path: Path) -> None:
        """Start from another run's weights (fine-tuning, a second schedule): same shape and vocabulary."""
        payload = checkpoint.load_payload(path)
        theirs = LSTMConfig.from_dict(payload["model_config"])
        if theirs.shape() != self.model_config.shape():
            raise UsageError(f"{path} has another model shape: drop the size options to take its shape")
        if payload["vocab"] != self.vocab.tokens:
            raise UsageError(f"{path} was trained on another vocabulary: prepare the corpus it was trained on")
        weights = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        checkpoint.load_weights(self.model, weights)

    # -- schedule ------------------------------------------------------------------------------
    def lr_at(self, step: int, elapsed: float) -> float:
        c = self.cfg
        if c.optimizer == "sgd":
            return c.lr * c.lr_decay ** max(0, self.epoch - c.decay_after + 1)
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps)
        if c.max_minutes:
            progress = max(progress, elapsed / (60 * c.max_minutes))
        progress = min(1.0, progress)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # -- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed, 1),
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "val": self.last_val,
            "corpus_hash": self.corpus_meta.get("corpus_hash"),
            "corpus_source": self.corpus_meta.get("source"),
            "script": self.corpus_meta.get("script"),
            "train_config": asdict(self.cfg),
            "device": str(self.device),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

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
            "train_config": asdict(self.cfg),
        }

    def save_last(self) -> Path:
        path = self.out / "last.pt"
        checkpoint.save(path, self.model, self.vocab, self.meta(), self.train_state())
        return path

    def resume(self, path: Path) -> None:
        """Restore everything from last.pt so training continues as if never stopped."""
        payload = checkpoint.load_payload(path)
        ts = payload.get("train_state")
        if ts is None:
            raise UsageError(f"{path} holds no training state (a best.pt or shipped model): resume from last.pt")
        if LSTMConfig.from_dict(payload["model_config"]) != self.model_config:
            raise UsageError(f"{path} was trained with another model shape: drop the size options or --resume")
        if payload["vocab"] != self.vocab.tokens:
            raise UsageError(f"{path} was trained on another vocabulary: rebuild that corpus or start afresh")
        checkpoint.load_weights(self.model, payload["state_dict"])
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
        self.last_val = payload["meta"].get("val")

    # -- loop ----------------------------------------------------------------------------------
    def _emit(self, event: dict) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        if self.on_event:
            self.on_event(event)

    def validate(self) -> dict:
        total, count = evaluate_stream(self.model, self.val_stream, self.device, self.cfg.eval_batch_size,
                                       self.cfg.bptt, self.cfg.precision)
        return metrics_from_loss(total / count)

    def _evaluate_and_save(self, train_loss: float, tokens_per_s: float) -> bool:
        """Validate, save best.pt/last.pt, log; True when early stopping says stop."""
        val = self.validate()
        self.last_val = val
        improved = val["nats_per_char"] < self.best_val
        if improved:
            self.best_val = val["nats_per_char"]
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        if improved:
            checkpoint.save(self.out / "best.pt", self.model, self.vocab, self.meta())
        self.save_last()
        self._emit({"event": "eval", "step": self.step, "epoch": self.epoch, "train_loss": train_loss,
                    "val_loss": val["nats_per_char"], "val_bpc": val["bits_per_char"],
                    "val_ppl": val["perplexity"], "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed,
                    "best": improved})
        return self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience

    def run(self, on_step: Callable[[Trainer], None] | None = None) -> dict:
        """Train until the budget is spent or early stopping; return the summary.
        Raises TrainingInterrupted after saving last.pt when interrupted (Ctrl-C)."""
        self.out.mkdir(parents=True, exist_ok=True)
        c = self.cfg
        self.model.train()
        t_start = time.perf_counter() - self.elapsed
        t_window, tokens_window, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        train_loss = math.nan
        tokens_per_s = 0.0
        stop_reason = "budget"
        try:
            while self.step < self.total_steps:
                if self.window >= self.windows_per_epoch:
                    self.epoch += 1
                    self.window = 0
                    self.state = None  # reset at the epoch boundary
                if self.epoch >= c.epochs:
                    break
                if c.max_minutes and self.elapsed >= 60 * c.max_minutes:
                    stop_reason = "time"
                    break
                lr = self.lr_at(self.step, self.elapsed)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x, y = get_batch(self.train_data, self.window, c.bptt)
                with autocast(self.device, c.precision):
                    loss, state = self.model.loss(x, y, self.state)
                self.state = detach_state(state)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
                self.optimizer.step()
                self.step += 1
                self.window += 1
                self.tokens_seen += x.numel()
                tokens_window += x.numel()
                loss_sum += loss.item()
                loss_n += 1
                self.elapsed = time.perf_counter() - t_start
                if self.step % c.log_every == 0 or self.step % c.eval_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    tokens_per_s = tokens_window / max(now - t_window, 1e-9)
                    train_loss = loss_sum / loss_n
                    t_window, tokens_window, loss_sum, loss_n = now, 0, 0.0, 0
                    self._emit({"event": "log", "step": self.step, "epoch": self.epoch, "train_loss": train_loss,
                                "lr": lr, "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed,
                                "total_steps": self.total_steps})
                if self.step % c.eval_every == 0 and self._evaluate_and_save(train_loss, tokens_per_s):
                    stop_reason = "early_stopping"
                    break
                if on_step:
                    on_step(self)
            if self.step % c.eval_every != 0 or self.last_val is None:
                if loss_n:
                    train_loss = loss_sum / loss_n
                self._evaluate_and_save(train_loss, tokens_per_s)
        except KeyboardInterrupt:
            path = self.save_last()
            raise TrainingInterrupted(
                f"interrupted at step {self.step}; saved {path}. Resume with: poetgen train --out {self.out} --resume"
            ) from None
        summary = {
            "steps": self.step,
            "epochs": round(self.tokens_seen / max(1, self.train_data.numel()), 3),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed, 1),
            "tokens_per_s": round(self.tokens_seen / max(self.elapsed, 1e-9), 1),
            "best_val_loss": self.best_val,
            "best_val_ppl": math.exp(self.best_val),
            "last_val": self.last_val,
            "stop_reason": stop_reason,
            "parameters": self.model.num_parameters(),
            "out": str(self.out),
        }
        self._emit({"event": "end", "step": self.step, "train_loss": train_loss, **summary})
        return summary
