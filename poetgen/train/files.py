"""A run's files: last.pt written with everything --resume needs, and read back so that training
continues exactly as if it had never stopped."""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import checkpoint
from ..checkpoint import Checkpoint, ModelMeta
from ..errors import PoetgenError, UsageError
from ..paths import atomic_write_text
from .state import RunState, TrainingDiverged, rng_state, set_rng_state


class RunFiles:
    """The Trainer's saving and resuming of last.pt (best.pt is written at each better validation)."""

    def save_last(self) -> Path:
        """Write last.pt: the weights and the run's state, everything --resume needs. Weights that are
        not finite numbers are never saved (TrainingDiverged): the file keeps its last good state."""
        path = self.out / "last.pt"
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingDiverged(f"the weights became infinite or NaN by step {self.position.step}: lower --lr "
                                   f"(now {self.cfg.peak_lr:g}) or --clip; the run's checkpoints keep their last "
                                   "good state")
        meter = self._meter
        saved = RunState.of(self.position, train_config=asdict(self.cfg), schedule_steps=self.schedule.total_steps,
                            schedule_minutes=self.schedule.total_minutes, optimizer=self.optimizer.state_dict(),
                            rng=rng_state(self.device),
                            meter={"loss_sum": meter.loss_sum, "steps": meter.steps} if meter and meter.steps
                            else None, teacher_sha256=self.teacher_sha256)
        checkpoint.save(path, self.model, self.vocab, run_meta(self), tones=self.tones, doubles=self.doubles,
                        train_state=saved.to_dict())
        return path

    def resume(self, last: Path | Checkpoint) -> None:
        """Restore everything from last.pt (its path, or the checkpoint plan_run loaded:
        RunPlan.resume_from) so training continues as if never stopped."""
        ckpt = last if isinstance(last, Checkpoint) else checkpoint.read(last)
        checkpoint.train_config_of(ckpt)
        if ckpt.config != self.model_config:
            raise UsageError(f"{ckpt.path} was trained with another model shape: drop the size options or --resume")
        ckpt.require_vocab(self.vocab, "rebuild that corpus or start afresh")
        saved = RunState.from_dict(ckpt.train_state, ckpt.path)
        if saved.teacher_sha256 is not None and saved.teacher_sha256 != self.teacher_sha256:
            raise UsageError(f"--teacher {self.cfg.teacher} is not the file this run started with (its contents "
                             "changed): put that teacher back to resume, or start a new run with --init-from "
                             f"{ckpt.path}")
        try:
            checkpoint.load_weights(self.model, ckpt.state_dict)
            self.optimizer.load_state_dict(saved.optimizer)
            set_rng_state(saved.rng, self.device)
            teacher_lstm = self.teacher is None or self.teacher.config.cell == "lstm"
            self.position = saved.position(self.model_config.cell == "lstm", self.device, teacher_lstm)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError):
            raise PoetgenError(f"{ckpt.path} has a damaged training state: resume from another copy, or start "
                               f"a new run with --init-from {ckpt.path}") from None
        self._meter_carry = saved.meter if isinstance(saved.meter, dict) else None
        self.schedule = replace(self.schedule, total_steps=saved.schedule_steps, total_minutes=saved.schedule_minutes)
        self.last_val = ckpt.meta.val
        drop_later_lines(self.out / "metrics.jsonl", self.position.step)

    def resume_command(self) -> str:
        """The command that continues this run."""
        parts = ["poetgen", "train", "--out", str(self.out), "--resume"]
        if self.data_dir is not None:
            parts += ["--data-dir", str(self.data_dir)]
        return " ".join(shlex.quote(p) for p in parts)


def software() -> dict:
    """What trains: poetgen's version, torch's, and the source commit (None outside a checkout)."""
    from .. import __version__
    from ..paths import source_commit

    return {"poetgen": __version__, "torch": str(torch.__version__), "commit": source_commit()}


def run_meta(trainer) -> ModelMeta:
    """What the run's checkpoints record about it now."""
    at, meta = trainer.position, trainer.corpus_meta
    return ModelMeta(
        script=meta.get("script"), corpus_hash=meta.get("corpus_hash"), corpus_source=meta.get("source"),
        step=at.step, epoch=at.epoch, tokens_seen=at.tokens_seen, elapsed_s=round(at.elapsed, 1),
        best_val_loss=None if math.isinf(at.best_val) else at.best_val, val=trainer.last_val,
        train_config=asdict(trainer.cfg), device=str(trainer.device),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        software=trainer.software,
        poets=meta.get("poets"),
    )


def drop_later_lines(metrics: Path, step: int) -> None:
    """Keep the lines of metrics.jsonl up to `step`, where last.pt stands: a run killed after its last
    save logged steps the resumed run logs again. Rewritten atomically; lines that are not JSON stay."""
    if not metrics.is_file():
        return
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) is None or _step_of(line) <= step]
    if len(kept) != len(lines):
        atomic_write_text(metrics, "".join(kept))


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None
    return step if isinstance(step, int) else None
