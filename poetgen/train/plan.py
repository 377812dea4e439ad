"""Planning a run from what the user asked for (plan_run writes nothing), and the use case of
`poetgen train` (train_run): the run's lock, its plan, its corpus and its trainer, in one call."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..config import DEFAULT_PRESET, PRESETS, REGULARIZERS, ModelConfig, TrainConfig
from ..errors import UsageError
from ..events import TrainEvent
from ..vocab import Vocab
from .state import run_lock


@dataclass
class RunPlan:
    """What `poetgen train` will do: a fresh run, a warm start, or a resume. The checkpoint a run
    starts from is read here, once, and handed on to the Trainer."""

    model_config: ModelConfig
    train_config: TrainConfig
    resume_from: Checkpoint | None = None  # --resume: the run's last.pt, for Trainer.resume
    init_checkpoint: Checkpoint | None = None  # --init-from: its checkpoint, for Trainer(init_checkpoint=...)
    vocab: Vocab | None = None  # the run's vocabulary: the corpus's, joined by an --init-from model's own tokens


SHAPE_OPTIONS = ("cell", "emb_size", "hidden_size", "num_layers", "tie_weights")


def plan_run(out: Path, vocab: Vocab, given: dict, resume: bool = False, preset: str | None = None) -> RunPlan:
    """Plan a run from the options the user gave (`given`: name → value, only those given).

    Model options are ModelConfig fields, the rest TrainConfig fields. A fresh run takes the preset's
    shape with the given overrides; --init-from takes the checkpoint's shape; --resume takes everything
    from last.pt and applies only the budget options (TrainConfig.RESUMABLE), refusing any other change."""
    if given.get("init_from") is not None:  # as last.pt stores it, whatever the caller passed
        given = {**given, "init_from": str(given["init_from"])}
    if given.get("teacher") is not None:  # resolved: a resume from another folder finds it, and knows it
        given = {**given, "teacher": str(Path(given["teacher"]).expanduser().resolve())}
    if resume:
        return _plan_resume(out, given, preset)
    if (out / "last.pt").exists() or (out / "best.pt").exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    model_given = {k: v for k, v in given.items() if k in SHAPE_OPTIONS + REGULARIZERS}
    train_given = {k: v for k, v in given.items() if k not in model_given}
    if "distill" in train_given and train_given.get("teacher") is None:
        raise UsageError("--distill weighs what --teacher teaches: give --teacher FILE too, or drop --distill")
    init_checkpoint = None
    if train_given.get("init_from") is not None:
        if preset is not None or any(k in SHAPE_OPTIONS for k in model_given):
            raise UsageError("--init-from takes the model's shape from the checkpoint: drop --preset, --cell, "
                             "--emb-size, --hidden-size, --layers and --untied")
        init_checkpoint = _init_checkpoint(Path(train_given["init_from"]))
        base = init_checkpoint.config.to_dict()
        vocab = joined(vocab, init_checkpoint.vocab)
    else:
        preset = preset or DEFAULT_PRESET
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    model_config = ModelConfig.from_dict({**base, **model_given, "vocab_size": len(vocab)})
    if "max_steps" in train_given and "epochs" not in train_given:
        train_given["epochs"] = None  # --max-steps alone sets the length of the run
    return RunPlan(model_config.validate(), TrainConfig(**train_given).validate(), init_checkpoint=init_checkpoint,
                   vocab=vocab)


def joined(vocab: Vocab, model_vocab: Vocab) -> Vocab:
    """The corpus's vocabulary followed by the tokens of a model's that it lacks: a fine-tune keeps every
    character the model could write, and the corpus's token ids stay as they are."""
    extra = [t for t in model_vocab.tokens if t not in vocab.stoi]
    return Vocab([*vocab.tokens, *extra]) if extra else vocab


def _plan_resume(out: Path, given: dict, preset: str | None) -> RunPlan:
    """The plan of --resume: the run's own settings from last.pt, the budget options changed as given."""
    last = out / "last.pt"
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
    return RunPlan(ckpt.config, train_config.validate(), resume_from=ckpt, vocab=ckpt.vocab)


def _init_checkpoint(path: Path, flag: str = "--init-from") -> Checkpoint:
    """The checkpoint --init-from (or `flag`) names, read."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: pass a checkpoint file (e.g. {path}/best.pt)")
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file: pass a checkpoint (e.g. runs/NAME/best.pt)")
    return checkpoint.read(path)


def read_teacher(path: Path, vocab: Vocab) -> Checkpoint:
    """The checkpoint --teacher names, read: its vocabulary must be the run's, or the first tokens of it
    (the run's is the corpus's, joined by an --init-from model's own tokens)."""
    teacher = _init_checkpoint(path, "--teacher")
    if teacher.vocab.tokens != vocab.tokens[:len(teacher.vocab)]:
        raise UsageError(f"--teacher {path} was trained on another vocabulary than this run's: distil from a model "
                         "of this corpus's vocabulary")
    return teacher


def train_run(out: Path, data_dir: Path, given: dict, *, resume: bool = False, preset: str | None = None,
              listeners: list[Callable[[TrainEvent], None]] = (), named_data_dir: Path | None = None,
              loading: AbstractContextManager | None = None) -> dict:
    """`poetgen train`: plan the run in `out` from the options `given` (plan_run), load the prepared
    corpus in `data_dir`, and train (or resume) it; its summary. The run's lock is held from the check
    that `out` is free to the end. `listeners` hear every event; `loading` is entered while the plan
    and the corpus load (a spinner); `named_data_dir` is the --data-dir the resume command names."""
    from .. import corpus
    from .trainer import Trainer

    meta = corpus.load_meta(data_dir)
    vocab = Vocab.load(data_dir / "vocab.json")
    with run_lock(out):
        for stale in out.glob(".*.pt.*.tmp"):  # a save a kill cut short
            stale.unlink(missing_ok=True)
        with loading or nullcontext():
            plan = plan_run(out, vocab, given, resume=resume, preset=preset)
            train_stream = corpus.load_train(data_dir, plan.train_config.train_split, meta=meta)
            val_stream = corpus.load_split(data_dir, "val", meta=meta)
            tones, doubles = corpus.corpus_tones(data_dir), corpus.corpus_doubles(data_dir)
            start = plan.init_checkpoint or plan.resume_from  # a corpus without the tables: the model's own
            tones = tones if tones is not None or start is None else start.tones
            doubles = doubles if doubles is not None or start is None else start.doubles
            if start is not None and start.meta.poets:  # the poets a model knew, it still knows
                meta = {**meta, "poets": {**start.meta.poets, **(meta.get("poets") or {})}}
            run_vocab = plan.vocab if plan.vocab.tokens[:len(vocab)] == vocab.tokens else vocab  # else resume refuses
            teacher = read_teacher(Path(plan.train_config.teacher), run_vocab) if plan.train_config.teacher else None
        trainer = Trainer(plan.model_config, plan.train_config, run_vocab, train_stream, val_stream, out, meta,
                          tones=tones, doubles=doubles, data_dir=named_data_dir, listeners=listeners,
                          init_checkpoint=plan.init_checkpoint, teacher=teacher)
        if plan.resume_from is not None:
            trainer.resume(plan.resume_from)
        return trainer.run()
