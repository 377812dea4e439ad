"""`poetgen train`: its options, the run folder check, the trainer with its progress on stderr."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ...config import RUN_OPTIONS, ModelConfig, TrainConfig
from ...errors import UsageError
from ..app import app
from ..errors import handle_errors, write_stdout
from ..options import (
    DEFAULT_DEVICE,
    AsJsonOpt,
    BatchSizeOpt,
    BpttOpt,
    CellOpt,
    CharDropoutOpt,
    ClipOpt,
    DataDirOpt,
    DecayAfterOpt,
    DeviceOpt,
    DistillOpt,
    DropoutOpt,
    EmbDropoutOpt,
    EmbSizeOpt,
    EpochsOpt,
    EvalEveryOpt,
    HiddenSizeOpt,
    InitFromOpt,
    LockedDropoutOpt,
    LogEveryOpt,
    LrDecayOpt,
    LrOpt,
    MaxMinutesOpt,
    MaxStepsOpt,
    MinLrRatioOpt,
    NumLayersOpt,
    OptimizerOpt,
    OutOpt,
    PatienceOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    ResumeOpt,
    SampledSoftmaxOpt,
    TeacherOpt,
    ThreadsOpt,
    TrainSeedOpt,
    TrainSplitOpt,
    UntiedOpt,
    WarmupStepsOpt,
    WeightDecayOpt,
    WeightDropOpt,
    data_root,
    examples,
)
from ..progress import alive
from ..render import to_json


@app.command("train", short_help="Train a model on the prepared corpus (after corpus prepare).",
    epilog=examples(
    "poetgen train --preset tiny --max-minutes 10 --out runs/tiny",
    "poetgen train --out runs/tiny --resume --max-minutes 30",
    "poetgen train --init-from runs/a/best.pt --lr 5e-4 --dropout 0.4 --out runs/b",
    "poetgen train --preset small --teacher checkpoints/poetgen-default.pt --out runs/student"))
@handle_errors
def train_cmd(
    ctx: typer.Context, out: OutOpt = Path("runs/default"), data_dir: DataDirOpt = None, preset: PresetOpt = None,
    cell: CellOpt = None, emb_size: EmbSizeOpt = None, hidden_size: HiddenSizeOpt = None,
    num_layers: NumLayersOpt = None, dropout: DropoutOpt = None, emb_dropout: EmbDropoutOpt = None,
    locked_dropout: LockedDropoutOpt = ModelConfig.locked_dropout,
    char_dropout: CharDropoutOpt = ModelConfig.char_dropout, weight_drop: WeightDropOpt = ModelConfig.weight_drop,
    untied: UntiedOpt = False, batch_size: BatchSizeOpt = TrainConfig.batch_size, bptt: BpttOpt = TrainConfig.bptt,
    epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None, max_minutes: MaxMinutesOpt = None,
    optimizer: OptimizerOpt = TrainConfig.optimizer, lr: LrOpt = None,
    weight_decay: WeightDecayOpt = TrainConfig.weight_decay,
    warmup_steps: WarmupStepsOpt = TrainConfig.warmup_steps, min_lr_ratio: MinLrRatioOpt = TrainConfig.min_lr_ratio,
    lr_decay: LrDecayOpt = TrainConfig.lr_decay, decay_after: DecayAfterOpt = TrainConfig.decay_after,
    clip: ClipOpt = TrainConfig.clip, eval_every: EvalEveryOpt = TrainConfig.eval_every,
    log_every: LogEveryOpt = TrainConfig.log_every, patience: PatienceOpt = None,
    seed: TrainSeedOpt = TrainConfig.seed, device: DeviceOpt = DEFAULT_DEVICE,
    precision: PrecisionOpt = TrainConfig.precision, init_from: InitFromOpt = None,
    sampled_softmax: SampledSoftmaxOpt = TrainConfig.sampled_softmax, teacher: TeacherOpt = None,
    distill: DistillOpt = TrainConfig.distill,
    train_split: TrainSplitOpt = TrainConfig.train_split, resume: ResumeOpt = False, as_json: AsJsonOpt = False,
    threads: ThreadsOpt = None, quiet: QuietOpt = False,
) -> None:
    """Train the language model with truncated backpropagation through time."""
    given = {name: value for name, value in ctx.params.items()  # a run keeps its defaults for the rest
             if name in RUN_OPTIONS and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    if untied:
        given["tie_weights"] = False
    check_out(out)
    with alive("loading torch", quiet):  # seconds, before the run's own progress
        from ... import train
        from ...device import set_cpu_threads
        from ..progress import TrainProgress
        from ..render import print_train_summary

    set_cpu_threads(threads)
    with TrainProgress(quiet) as progress:
        summary = train.train_run(out, data_root(data_dir), given, resume=resume, preset=preset,
                                  listeners=[progress], named_data_dir=data_dir.resolve() if data_dir else None,
                                  loading=alive("loading the corpus", quiet))
    if not quiet:
        print_train_summary(summary)
    if as_json:
        write_stdout(to_json(summary) + "\n")


def check_out(out: Path) -> None:
    """--out must be a folder we can write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the run")
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out {out}: {probe} is not writable: choose another folder")
