"""`poetgen train`: its options, the run folder check, the trainer with its progress on stderr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...config import CELLS, DEFAULT_LR, WARMUP_STEPS, ModelConfig
from ...config import TrainConfig as _D  # the defaults of a run, shown in --help
from ...errors import UsageError
from ..app import app
from ..errors import handle_errors, write_stdout
from ..options import (
    DEFAULT_DEVICE,
    DataDirOpt,
    DeviceOpt,
    OptimizerOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    ThreadsOpt,
    TrainSplitOpt,
    cell_option,
    data_root,
    examples,
    flag,
    json_option,
)
from ..progress import alive
from ..render import to_json


def _from_preset(option: str, help: str):
    return typer.Option(option, help=help, show_default="from --preset")


@app.command("train", short_help="Train a model on the prepared corpus (after corpus prepare).",
    epilog=examples(
    "poetgen train --preset tiny --max-minutes 10 --out runs/tiny",
    "poetgen train --out runs/tiny --resume --max-minutes 30",
    "poetgen train --init-from runs/a/best.pt --lr 5e-4 --dropout 0.4 --out runs/b"))
@handle_errors
def train_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Run folder: best.pt, last.pt, metrics.jsonl.",
                                      metavar="DIR")] = Path("runs/default"),
    data_dir: DataDirOpt = None,
    preset: PresetOpt = None,
    cell: Annotated[Optional[str], cell_option(f"Recurrent cell: {', '.join(CELLS)} (tanh).",
                                               show_default=ModelConfig.cell)] = None,
    emb_size: Annotated[Optional[int], _from_preset("--emb-size", "Embedding size.")] = None,
    hidden_size: Annotated[Optional[int], _from_preset("--hidden-size", "Hidden size.")] = None,
    num_layers: Annotated[Optional[int], _from_preset("--layers", "Stacked layers.")] = None,
    dropout: Annotated[Optional[float], _from_preset("--dropout", "Dropout between layers and on the output.")
                       ] = None,
    emb_dropout: Annotated[Optional[float], _from_preset("--emb-dropout", "Dropout on the embeddings.")] = None,
    locked_dropout: Annotated[bool, typer.Option(
        "--locked-dropout/--no-locked-dropout", help="AWD-LSTM: one dropout mask per sequence for the "
        "embeddings, between layers and the output, the same at every step.")] = ModelConfig.locked_dropout,
    char_dropout: Annotated[float, typer.Option(
        "--char-dropout", help="AWD-LSTM: drop whole characters from the embedding table (one draw per "
        "window).")] = ModelConfig.char_dropout,
    weight_drop: Annotated[float, typer.Option(
        "--weight-drop", help="AWD-LSTM: DropConnect on the hidden-to-hidden matrices while training.")] = (
        ModelConfig.weight_drop),
    untied: Annotated[bool, flag("--untied", "Do not tie input and output embeddings.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows B of the (B, T) window.")] = _D.batch_size,
    bptt: Annotated[int, typer.Option("--bptt", help="Window length T of truncated BPTT.")] = _D.bptt,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the train split.",
                                                  show_default=f"{_D.epochs}, none with --max-steps alone")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps.",
                                                     show_default="no limit")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop after this much time, the final evaluation included (a fresh run's cosine "
        "schedule follows it).", show_default="no limit")] = None,
    optimizer: OptimizerOpt = _D.optimizer,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default=", ".join(
        f"{v:g} with {k}" for k, v in DEFAULT_LR.items()))] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay on matrices.")] = (
        _D.weight_decay),
    warmup_steps: Annotated[Optional[int], typer.Option(
        "--warmup-steps", help="Linear warmup steps (adamw).",
        show_default=f"{WARMUP_STEPS}, or a tenth of the budget if that is less")] = _D.warmup_steps,
    min_lr_ratio: Annotated[float, typer.Option("--min-lr-ratio", help="The cosine ends at this share of the "
                                                "peak rate (adamw).")] = _D.min_lr_ratio,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="sgd: multiply the rate by this each epoch after "
                                            "--decay-after.")] = _D.lr_decay,
    decay_after: Annotated[int, typer.Option("--decay-after", help="sgd: the epoch the step decay starts.")] = (
        _D.decay_after),
    clip: Annotated[float, typer.Option("--clip", help="Global gradient-norm clipping threshold.")] = _D.clip,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate (and save) every N steps.")] = (
        _D.eval_every),
    log_every: Annotated[int, typer.Option("--log-every", help="Log train loss every N steps.")] = _D.log_every,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Stop after N evaluations without "
                                                    "improvement.", show_default="never")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (CPU runs repeat exactly).")] = _D.seed,
    device: DeviceOpt = DEFAULT_DEVICE,
    precision: PrecisionOpt = _D.precision,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from this checkpoint's weights (its shape; fresh optimizer and schedule). "
        "From a model of another vocabulary, the characters both hold keep their rows and the others start "
        "from their mean.", metavar="FILE", show_default="fresh weights")] = None,
    sampled_softmax: Annotated[int, typer.Option(
        "--sampled-softmax", help="Train the output layer on the batch's targets plus K sampled negatives "
        "instead of the whole vocabulary (faster; an approximation: finish with a full-softmax run; the logged "
        "train loss is over the sampled columns); 0 is off.",
        metavar="K")] = _D.sampled_softmax,
    train_split: TrainSplitOpt = _D.train_split,
    resume: Annotated[bool, flag("--resume", "Continue the run in --out from its last.pt (only the budget "
                                 "options --epochs, --max-steps, --max-minutes, --eval-every, --log-every, "
                                 "--patience may change).")] = False,
    as_json: Annotated[bool, json_option("Print a JSON summary on stdout at the end.")] = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the language model with truncated backpropagation through time."""
    given = given_options(
        ctx, cell=cell, emb_size=emb_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout,
        emb_dropout=emb_dropout, locked_dropout=locked_dropout, char_dropout=char_dropout, weight_drop=weight_drop,
        batch_size=batch_size, bptt=bptt, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
        optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
        lr_decay=lr_decay, decay_after=decay_after, clip=clip, eval_every=eval_every, log_every=log_every,
        patience=patience, seed=seed, device=device, precision=precision, init_from=init_from,
        train_split=train_split, sampled_softmax=sampled_softmax)
    if untied:
        given["tie_weights"] = False
    if "init_from" in given:
        given["init_from"] = str(given["init_from"])
    check_out(out)
    with alive("loading torch", quiet):  # seconds, before the run's own progress
        from ... import corpus, train
        from ...corpus import load_split, load_train
        from ...device import set_cpu_threads
        from ...vocab import Vocab
        from ..render import print_train_summary

    set_cpu_threads(threads)
    root = data_root(data_dir)
    meta = corpus.load_meta(root)
    vocab = Vocab.load(root / "vocab.json")
    with train.run_lock(out):  # from the check that the folder is free to the end of the run
        with alive("loading the corpus", quiet):
            plan = train.plan_run(out, vocab, given, resume=resume, preset=preset)
            train_stream = load_train(root, plan.train_config.train_split, meta=meta)
            val_stream = load_split(root, "val", meta=meta)
            tables = {"tones": corpus.corpus_tones(root), "doubles": corpus.corpus_doubles(root)}
        summary = _run(plan, vocab, train_stream, val_stream, out, meta, tables, data_dir, quiet)
    if not quiet:
        print_train_summary(summary)
    if as_json:
        write_stdout(to_json(summary) + "\n")


def _run(plan, vocab, train_stream, val_stream, out: Path, meta: dict, tables: dict, data_dir: Path | None,
         quiet: bool) -> dict:
    """The run of a plan, with its progress; its summary. `tables`: the corpus's tones and doubles."""
    from ... import train
    from ..progress import TrainProgress

    with TrainProgress(quiet) as progress:
        trainer = train.Trainer(plan.model_config, plan.train_config, vocab, train_stream, val_stream, out, meta,
                                tones=tables["tones"], doubles=tables["doubles"],
                                data_dir=data_dir.resolve() if data_dir else None, on_train_event=progress,
                                init_checkpoint=plan.init_checkpoint)
        if plan.resume_from is not None:
            trainer.resume(plan.resume_from)
        return trainer.run()


def given_options(ctx: typer.Context, **values) -> dict:
    """The `values` whose options were given on the command line: a run's config takes those and keeps
    its defaults (or, with --resume, the run's own values) for the rest."""
    return {name: value for name, value in values.items()
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}


def check_out(out: Path) -> None:
    """--out must be a folder we can write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the run")
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out {out}: {probe} is not writable: choose another folder")
