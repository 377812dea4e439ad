"""The poetgen command line: option declarations, progress display, rendering and exit codes.

The work is done by the library; defaults come from its dataclasses (config.py). Heavy modules
(torch, numpy, opencc) are imported inside the commands, after the arguments are checked, so
`poetgen --help`, `check` and argument errors stay fast."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import (
    CELLS,
    DEFAULT_LR,
    DEFAULT_PRESET,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    TRAIN_SPLITS,
    ModelConfig,
    SampleOptions,
)
from .config import TrainConfig as TC
from .errors import PoetgenError, UsageError
from .forms import FORMS
from .text import plural

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="poetgen: write and check Tang poems with a character-level LSTM language model.\n\n"
         "Start with `poetgen sample` (it uses the shipped model); to train your own, run "
         "`poetgen corpus prepare` first.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
corpus_app = typer.Typer(
    help="Fetch and prepare the 全唐诗 corpus (chinese-poetry@2.0.1): run `prepare` before training.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(corpus_app, name="corpus", short_help="Fetch and prepare the corpus: `corpus prepare` before training.")


def examples(*lines: str) -> str:
    """A command's help epilog: real examples, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def flag(name: str, help: str, *alt: str):
    """A boolean flag: shown without a type, off unless given."""
    return typer.Option(name, *alt, help=f"{help} [default: off]", metavar="", show_default=False)


# -- options shared by several commands, declared once -------------------------------------------
CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option("--checkpoint", "-c", help="Model file.", show_default="the shipped model", metavar="FILE"),
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Prepared-corpus folder.", metavar="DIR",
                 show_default="$POETGEN_DATA, corpus/ in a checkout, else the per-user data folder"),
]
QuietOpt = Annotated[bool, flag("--quiet", "No progress on stderr.", "-q")]
JsonOpt = Annotated[bool, flag("--json", "Print JSON on stdout instead of text.")]
FormChoices = ["free", *FORMS, *(f.name for f in FORMS.values())]


def complete_form(incomplete: str) -> list[str]:
    return [f for f in FormChoices if f.startswith(incomplete)]


# -- errors, consoles, output ---------------------------------------------------------------------


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    try:
        sys.stderr.write(f"poetgen: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return typer.Exit(code)


def handle_errors(fn):
    """Turn domain errors and OS errors into one stderr line and an exit code; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PoetgenError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            raise fail(f"cannot write or read{where}: {e.strerror or e} — free some space, fix the "
                       "permissions or choose another path", 1) from None

    return wrapper


def plain_output() -> bool:
    """No colours, styles or cursor movement: NO_COLOR is set, or stderr is not a terminal."""
    return "NO_COLOR" in os.environ or not sys.stderr.isatty()


def console(stderr: bool = True):
    from rich.console import Console

    no_style = "NO_COLOR" in os.environ
    return Console(stderr=stderr, color_system=None if no_style else "auto", no_color=no_style,
                   highlight=False, emoji=False)


def _silence_stdout() -> None:
    """The reader went away (`| head`): send what is left to /dev/null so Python's exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def write_stdout(text: str) -> bool:
    """Write to stdout; False (quietly) when the reader has gone away or stdout is closed."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        _silence_stdout()
        return False
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno not in (9, None):
            raise fail(f"cannot write the output: {e.strerror}", 1) from None
        raise fail("stdout is closed: redirect it to a file or drop `>&-`", 1) from None


def emit(text: str, output: Path | None = None, inputs: tuple[Path | None, ...] = ()) -> None:
    """Send a command's output to --output (safely) or stdout."""
    if output is None:
        write_stdout(text)
        return
    from .paths import same_file, write_output

    for path in inputs:
        if path is not None and same_file(path, output):
            raise UsageError(f"--output {output} is also an input of this command: choose another path")
    write_output(output, text)


class StageProgress:
    """Progress on stderr fed by the library's progress(stage, done, total) calls: a live bar in a
    terminal, a line per finished stage otherwise."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.said: dict[str, float] = {}  # plain output: when each stage last printed a line (or began)
        self.plain = False

    def __enter__(self):
        self.plain = not self.quiet and plain_output()
        if not self.quiet and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console(), transient=False)
            self.progress.__enter__()
        return self

    # without a terminal: a stage that runs 2 s says how far it is, then once per 10 s, and every
    # stage says when it is done (a quick failure stays one line)
    PLAIN_FIRST_S, PLAIN_EVERY_S = 2.0, 10.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.plain:
            now = time.monotonic()
            if stage not in self.said:
                self.said[stage] = now - self.PLAIN_EVERY_S + self.PLAIN_FIRST_S  # the first line after 2 s
            if done == total:
                typer.echo(f"{stage}: done ({done}/{total})", err=True)
            elif now - self.said[stage] >= self.PLAIN_EVERY_S:
                typer.echo(f"{stage}: {done}/{total}", err=True)
                self.said[stage] = now
        if self.progress is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"poetgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """poetgen: write and check Tang poems with a character-level LSTM language model.

    Start with `poetgen sample` (it uses the shipped model); to train your own, run
    `poetgen corpus prepare` first."""


def _data_dir(data_dir: Path | None) -> Path:
    from .paths import resolve_data_dir

    return resolve_data_dir(data_dir)


# ---------------------------------------------------------------------------------------------
# corpus

FromOpt = Annotated[
    Optional[Path],
    typer.Option("--from", help="A local chinese-poetry-2.0.1.tgz or extracted package folder (offline).",
                 show_default="download with npm pack", metavar="PATH"),
]
ScriptOpt = Annotated[str, typer.Option("--script", help="simplified (OpenCC t2s) or traditional.")]
MinCountOpt = Annotated[int, typer.Option("--min-count", help="Keep characters seen at least this often in train.")]
WithSongOpt = Annotated[bool, typer.Option(
    "--with-song/--no-song", help="Also prepare the 全宋诗 of the same package (~250,000 poems, ~5x the Tang "
    "train split's tokens) as a training "
    "split of its own, `song` (see `train --train-split`); the Tang splits stay as they are.")]


def _report_build(result, quiet: bool) -> None:
    if quiet:
        return
    meta = result.meta
    p = meta["poems"]
    typer.echo(f"built {meta['script']} corpus in {result.data_dir}: {p['train']:,} train / {p['val']:,} val / "
               f"{p['test']:,} test poems, vocabulary {meta['vocab_size']:,}, "
               f"dropped {plural(sum(meta['dropped'].values()), 'poem')}", err=True)
    song = meta.get("song")
    if song:
        typer.echo(f"with the 全宋诗: {song['poems']:,} song poems ({song['tokens']:,} tokens, "
                   f"{song['unknown_tokens']:,} outside the Tang vocabulary)", err=True)


@corpus_app.command("fetch", short_help="Download and verify the pinned package (cached).",
    epilog=examples("poetgen corpus fetch",
                                             "poetgen corpus fetch --from ~/Downloads/chinese-poetry-2.0.1.tgz"))
@handle_errors
def corpus_fetch(data_dir: DataDirOpt = None, source: FromOpt = None, quiet: QuietOpt = False) -> None:
    """Download chinese-poetry@2.0.1 with `npm pack`, verify its sha512 integrity, and cache it."""
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
        path = corpus.fetch(root, source, progress=progress)
    if not quiet:
        typer.echo(f"corpus package ready: {path}", err=True)


def _build(data_dir, source, script: str, min_count: int, quiet: bool, fetch_first: bool,
           with_song: bool = False) -> None:
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
        if fetch_first:
            source = corpus.fetch(root, source, progress=progress)
        result = corpus.build(root, source, script=script, min_count=min_count, progress=progress,
                              with_song=with_song)
    _report_build(result, quiet)


@corpus_app.command("build", short_help="Clean, split and tokenize the fetched package.",
    epilog=examples("poetgen corpus build", "poetgen corpus build --script traditional"))
@handle_errors
def corpus_build(data_dir: DataDirOpt = None, source: FromOpt = None, script: ScriptOpt = "simplified",
                 min_count: MinCountOpt = 2, with_song: WithSongOpt = False, quiet: QuietOpt = False) -> None:
    """Clean, convert, split and tokenize the fetched package into the prepared corpus."""
    _build(data_dir, source, script, min_count, quiet, fetch_first=False, with_song=with_song)


@corpus_app.command("prepare", short_help="Fetch and build: run this before training.",
    epilog=examples("poetgen corpus prepare",
                                               "poetgen corpus prepare --with-song",
                                               "poetgen corpus prepare --data-dir /tmp/tang --script traditional"))
@handle_errors
def corpus_prepare(data_dir: DataDirOpt = None, source: FromOpt = None, script: ScriptOpt = "simplified",
                   min_count: MinCountOpt = 2, with_song: WithSongOpt = False, quiet: QuietOpt = False) -> None:
    """Fetch and build in one step: the command to run before training."""
    _build(data_dir, source, script, min_count, quiet, fetch_first=True, with_song=with_song)


@corpus_app.command("stats", short_help="Poems, forms, characters and drops per split.",
    epilog=examples("poetgen corpus stats", "poetgen corpus stats --json --top 100"))
@handle_errors
def corpus_stats(
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
    top: Annotated[int, typer.Option("--top", help="How many frequent characters to show.", min=0)] = 20,
) -> None:
    """Poems per split, forms, characters, vocabulary size, frequent characters and drop reasons."""
    from . import corpus

    meta = corpus.load_meta(_data_dir(data_dir))
    if as_json:
        keys = ("poems", "tokens", "characters", "vocab_size", "dropped", "source", "script", "forms",
                "poems_read", "unknown_tokens", "glyphs", "song", "corpus_hash")
        out = {k: meta.get(k) for k in keys}
        out["top_chars"] = meta["top_chars"][:top]
        write_stdout(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
        return
    from rich.table import Table

    splits = ("train", "val", "test")
    table = Table(title=f"全唐诗 corpus ({meta['script']}, {meta['source']['package']}@{meta['source']['version']})")
    table.add_column("")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_row("poems", *(f"{meta['poems'][s]:,}" for s in splits))
    table.add_row("tokens", *(f"{meta['tokens'][s]:,}" for s in splits))
    table.add_row("body characters", *(f"{meta['characters'][s]:,}" for s in splits))
    table.add_row("unknown tokens", *(f"{meta['unknown_tokens'][s]:,}" for s in splits))
    for form in ("五绝", "七绝", "五律", "七律", "other"):
        table.add_row(form, *(f"{meta['forms'][s].get(form, 0):,}" for s in splits))
    drops = Table(title=f"dropped of {meta['poems_read']:,} poems read")
    drops.add_column("reason")
    drops.add_column("poems", justify="right")
    for reason, n in meta["dropped"].items():
        drops.add_row(reason, f"{n:,}")
    out = console(stderr=False)
    with out.capture() as captured:
        out.print(table)
        out.print(f"vocabulary: {meta['vocab_size']:,} tokens (min count {meta['min_count']})")
        glyphs = meta["glyphs"]
        if glyphs["tables"]:
            changed, pairs, left = glyphs["changed"], glyphs["changed_pairs"], glyphs["left"]
            out.print(f"glyphs: {changed['variant']:,} variant forms made standard ({pairs['variant']:,} pairs), "
                      f"{changed['outside_bmp']:,} characters outside the BMP given a BMP form "
                      f"({pairs['outside_bmp']:,} pairs), {changed['compat']:,} compatibility ideographs; left: "
                      f"{left['left_ambiguous']:,} variants with several standard forms, "
                      f"{left['left_outside_bmp']:,} characters with no BMP form (<unk>); every pair is in "
                      f"{_data_dir(data_dir) / corpus.GLYPHS_FILE}")
        song = meta.get("song")
        if song:
            out.print(f"全宋诗 (split `song`, training only): {song['poems']:,} poems of {song['poems_read']:,} read, "
                      f"{song['tokens']:,} tokens ({song['unknown_tokens']:,} outside the Tang vocabulary), "
                      f"dropped: " + ", ".join(f"{k} {v:,}" for k, v in song["dropped"].items()))
        out.print("most frequent: " + " ".join(f"{c}{n}" for c, n in meta["top_chars"][:top]))
        out.print(drops)
    write_stdout(captured.get())


# ---------------------------------------------------------------------------------------------
# train / eval

_D = TC  # the defaults of a run, shown in --help
_PRESET_SIZES = ", ".join(f"{k} ({v['num_layers']}x{v['hidden_size']})" for k, v in PRESETS.items())
_MODEL_FIELDS = {"cell": "cell", "emb_size": "emb_size", "hidden_size": "hidden_size", "num_layers": "num_layers",
                 "dropout": "dropout", "emb_dropout": "emb_dropout", "locked_dropout": "locked_dropout",
                 "char_dropout": "char_dropout", "weight_drop": "weight_drop"}
_TRAIN_FIELDS = ("batch_size", "bptt", "epochs", "max_steps", "max_minutes", "optimizer", "lr", "weight_decay",
                 "warmup_steps", "min_lr_ratio", "lr_decay", "decay_after", "clip", "eval_every", "log_every",
                 "patience", "seed", "device", "precision", "init_from", "train_split", "sampled_softmax")


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
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help=f"Model size: {_PRESET_SIZES}.",
        show_default=DEFAULT_PRESET)] = None,
    cell: Annotated[Optional[str], typer.Option("--cell", help=f"Recurrent cell: {', '.join(CELLS)} (tanh).",
                                                show_default=ModelConfig.cell)] = None,
    emb_size: Annotated[Optional[int], typer.Option("--emb-size", help="Embedding size.",
                                                    show_default="from --preset")] = None,
    hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="Hidden size.",
                                                       show_default="from --preset")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--layers", help="Stacked layers.",
                                                      show_default="from --preset")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", help="Dropout between layers and on the output.",
                                                     show_default="from --preset")] = None,
    emb_dropout: Annotated[Optional[float], typer.Option("--emb-dropout", help="Dropout on the embeddings.",
                                                         show_default="from --preset")] = None,
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
    optimizer: Annotated[str, typer.Option("--optimizer", help=f"{' or '.join(OPTIMIZERS)}: AdamW with warmup "
                                           "and cosine decay, or SGD with step decay.")] = _D.optimizer,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default=", ".join(
        f"{v:g} with {k}" for k, v in DEFAULT_LR.items()))] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay on matrices.")] = (
        _D.weight_decay),
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps (adamw).")] = (
        _D.warmup_steps),
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
    device: Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.")] = _D.device,
    precision: Annotated[str, typer.Option("--precision", help=f"{', '.join(PRECISIONS)}: auto is bf16 on CUDA, "
                                           "fp32 elsewhere; bf16 is also faster on CPUs with AVX512-BF16 or AMX.")
                         ] = _D.precision,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from this checkpoint's weights (its shape; fresh optimizer and schedule). "
        "From a model of another vocabulary, the characters both hold keep their rows and the others start "
        "fresh.", metavar="FILE", show_default="fresh weights")] = None,
    sampled_softmax: Annotated[int, typer.Option(
        "--sampled-softmax", help="Train the output layer on the batch's targets plus K sampled negatives "
        "instead of the whole vocabulary (faster; an approximation: finish with a full-softmax run; the logged "
        "train loss is over the sampled columns); 0 is off.",
        metavar="K")] = _D.sampled_softmax,
    train_split: Annotated[str, typer.Option(
        "--train-split", help=f"{', '.join(TRAIN_SPLITS)}: the Tang train split, the 全宋诗 (corpus prepare "
        "--with-song), or both; validation is always on Tang val.")] = _D.train_split,
    resume: Annotated[bool, flag("--resume", "Continue the run in --out from its last.pt (only the budget "
                                 "options --epochs, --max-steps, --max-minutes, --eval-every, --log-every, "
                                 "--patience may change).")] = False,
    as_json: Annotated[bool, flag("--json", "Print a JSON summary on stdout at the end.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the language model with truncated backpropagation through time."""
    given = {}
    for name in (*_MODEL_FIELDS, *_TRAIN_FIELDS):
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            given[name] = locals()[name]
    if untied:
        given["tie_weights"] = False
    if "init_from" in given:
        given["init_from"] = str(given["init_from"])
    if preset is not None and preset not in PRESETS:
        raise fail(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}", 2)
    _check_out(out)
    from . import corpus, train
    from .data import load_split, load_train
    from .vocab import Vocab

    root = _data_dir(data_dir)
    meta = corpus.load_meta(root)
    vocab = Vocab.load(root / "vocab.json")
    plan = train.plan_run(out, vocab, given, resume=resume, preset=preset)
    train_stream, val_stream = load_train(root, plan.train_config.train_split), load_split(root, "val")
    with TrainProgress(quiet) as progress:
        trainer = train.Trainer(plan.model_config, plan.train_config, vocab, train_stream, val_stream, out, meta,
                                on_event=progress.event, tones=train.corpus_tones(root),
                                data_dir=data_dir.resolve() if data_dir else None)
        if plan.resume_from is not None:
            trainer.resume(plan.resume_from)
        progress.trainer = trainer
        summary = trainer.run()
    if not quiet:
        print_train_summary(summary)
    if as_json:
        write_stdout(json.dumps(summary) + "\n")


def _check_out(out: Path) -> None:
    """--out must be a folder we can write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the run")
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out {out}: {probe} is not writable: choose another folder")


class TrainProgress:
    """The progress of `poetgen train` on stderr: a live bar in a terminal, a line per evaluation otherwise."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.val_ppl = None
        self.plain = False
        self.trainer = None

    def __enter__(self):
        self.plain = not self.quiet and plain_output()
        if not self.quiet and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val ppl {task.fields[ppl]}  {task.fields[tps]} tok/s "
                           "{task.fields[note]}"),
                TimeRemainingColumn(), console=console(), refresh_per_second=4,
            )
            self.progress.__enter__()
        return self

    def start(self, trainer) -> None:
        c = trainer.cfg
        if not self.quiet:
            budget = [f"{trainer.total_steps:,} steps" if trainer.stop_steps else None,
                      f"{c.max_minutes:g} min" if c.max_minutes else None]
            what = "resuming" if trainer.step else "training"
            typer.echo(f"{what} {trainer.model_config.num_layers}x{trainer.model_config.hidden_size} "
                       f"{trainer.model_config.cell} on {trainer.device} from step {trainer.step:,}; budget "
                       f"{' or '.join(b for b in budget if b)}; validation every {plural(c.eval_every, 'step')}"
                       + (f"; sampled softmax, {c.sampled_softmax:,} negatives (train loss over the sampled "
                          "columns)" if c.sampled_softmax else ""), err=True)
        if self.progress is not None:
            ppl = trainer.last_val["record"]["perplexity"] if trainer.last_val and "record" in trainer.last_val \
                else None
            self.task = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.step,
                                               epoch=trainer.epoch, loss="-", ppl=_fmt(ppl), tps="-", note="")

    def event(self, e: dict) -> None:
        if e["event"] == "start":
            self.start(self.trainer)
            return
        if e["event"] == "note":
            if not self.quiet:
                typer.echo(e["message"], err=True)
            return
        if self.plain and e["event"] == "eval":
            typer.echo(f"step {e['step']} epoch {e['epoch']}: train loss {_fmt(e['train_loss'], 3)}, val loss "
                       f"{e['val_loss']:.4f}, val ppl {e['val_ppl']:.2f} (body {e['val_body_ppl']:.2f}), "
                       f"{e['tokens_per_s']:,.0f} tok/s, {e['elapsed_s']:.0f} s", err=True)
        if self.progress is None or self.task is None:
            return
        if e["event"] == "evaluating":
            self.progress.update(self.task, note="(validating)")
            return
        if e["event"] == "eval":
            self.val_ppl = e["val_ppl"]
        fields = {"epoch": e.get("epoch", 0), "ppl": _fmt(self.val_ppl), "note": ""}
        if e.get("train_loss") is not None:
            fields["loss"] = _fmt(e["train_loss"], 3)
        if e.get("tokens_per_s"):
            fields["tps"] = f"{e['tokens_per_s']:,.0f}"
        total = e.get("total_steps")
        self.progress.update(self.task, completed=e["step"], **({"total": total} if total else {}), **fields)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def print_train_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title="training summary")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", f"{summary['steps']:,}")
    table.add_row("epochs", f"{summary['epochs']:.2f}")
    table.add_row("parameters", f"{summary['parameters']:,}")
    table.add_row("tokens/s", f"{summary['tokens_per_s']:,.0f}")
    table.add_row("time", f"{summary['elapsed_s']:.0f} s")
    table.add_row("best val ppl", _fmt(summary["best_val_ppl"], 2))
    table.add_row("stopped by", summary["stop_reason"])
    table.add_row("best model", str(Path(summary["out"]) / "best.pt"))
    console().print(table)


def _figures(r: dict) -> str:
    rec, body = r["record"], r["body"]
    return (f"record {rec['nats_per_char']:.4f} nats/char, {rec['bits_per_char']:.4f} bits/char, perplexity "
            f"{rec['perplexity']:.2f}; body perplexity {body['perplexity']:.2f} ({body['bits_per_char']:.4f} "
            "bits/char)")


@app.command("eval", short_help="Perplexity of a model on a split or a file of poems.",
    epilog=examples("poetgen eval --split val",
                                     "poetgen eval -c runs/tiny/best.pt --split test --json",
                                     "poetgen eval --file my-poems.txt   # one poem per line, or title<TAB>poem"))
@handle_errors
def eval_cmd(
    checkpoint_path: CheckpointOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="val or test of the prepared corpus.",
                                                 show_default="none: give --split or --file")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="UTF-8 text, one poem per line (a body, or "
                                                 "title<TAB>body).", metavar="FILE", show_default="none")] = None,
    data_dir: DataDirOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "cpu",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure nats/char, bits/char and perplexity, over whole records and over poem text alone."""
    if (split is None) == (file is None):
        raise fail("give exactly one of --split val|test or --file TEXT", 2)
    if split is not None and split not in ("val", "test", "train"):
        raise fail(f"unknown split {split!r}: choose val or test", 2)
    from . import evaluate

    with StageProgress(quiet) as progress:
        result = evaluate.run(checkpoint_path, split=split, file=file,
                              data_dir=_data_dir(data_dir) if split else None, device=device,
                              progress=lambda done, total: progress(f"evaluating {split or file}", done, total))
    if as_json:
        write_stdout(json.dumps(result) + "\n")
        return
    write_stdout(f"{result['source']}: {_figures(result)} over {plural(result['chars'], 'character')} "
                 f"({result['unknown']:,} unknown)\n")


# ---------------------------------------------------------------------------------------------
# sample / info / export


@app.command("sample", short_help="Write poems (start here: the shipped model needs nothing else).",
    epilog=examples(
    "poetgen sample --prompt 春 --form qijue --seed 1",
    "poetgen sample --form 五律 --acrostic 春夏秋冬东南西北",
    "poetgen sample --form wujue --strict --rhyme 东 | poetgen check"))
@handle_errors
def sample_cmd(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The poem's beginning, kept verbatim.",
                                        show_default="none")] = "",
    title: Annotated[Optional[str], typer.Option("--title", "-t", help="A title to condition on.",
                                                 show_default="the model writes one (shown as the first line)")
                     ] = None,
    form: Annotated[str, typer.Option("--form", "-f", help="free, wujue (五绝), qijue (七绝), wulv (五律) or "
                                      "qilv (七律).", autocompletion=complete_form)] = "free",
    acrostic: Annotated[str, typer.Option("--acrostic", "-a", help="藏头诗: these characters start the lines.",
                                          show_default="none")] = "",
    num: Annotated[int, typer.Option("--num", "-n", help="How many poems (sampled together as one batch).")] = (
        SampleOptions.num),
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Sampling temperature; 0 is greedy.")
                           ] = SampleOptions.temperature,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k likeliest characters only.",
                                                 show_default="all")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the smallest set reaching "
                                                   "this probability, in (0, 1].", show_default="1")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed: the same seed and options give "
                                                "the same poems.", show_default="random")] = None,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Longest body in free form.")] = (
        SampleOptions.max_chars),
    strict: Annotated[bool, flag("--strict", "Enforce 格律 with --form: 平仄 template, one 平水韵 rhyme group, "
                                 "no repeated rhyme, no 孤平 or 三平尾.")] = False,
    template: Annotated[Optional[str], typer.Option("--template", help="With --strict: ping-plain, ping-rhymed, "
                                                    "ze-plain or ze-rhymed (平起/仄起 × 首句不入韵/入韵).",
                                                    show_default="one that fits, drawn per poem")] = None,
    rhyme: Annotated[Optional[str], typer.Option("--rhyme", help="Fixed forms: rhyme in the 平水韵 group of this "
                                                 "character (e.g. 东).", show_default="any group")] = None,
    no_rhyme: Annotated[bool, flag("--no-rhyme", "Fixed forms without rhyme or the 重字 rule (the plain model).")
                        ] = False,
    best_of: Annotated[int, typer.Option("--best-of", "-N", help="Draw N candidates per poem in one batch and keep "
                                         "the likeliest (mean log-probability per character); 1 is plain sampling.")
                       ] = SampleOptions.best_of,
    checkpoint_path: CheckpointOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json or jsonl.")] = "text",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file (atomically) "
                                                   "instead of stdout.", metavar="FILE", show_default="stdout")
                      ] = None,
) -> None:
    """Write poems. Poems go to stdout, one line per verse line, a blank line between poems; when the
    model writes the title, it comes first, in 《》."""
    import secrets

    from .forms import get_form
    from .text import LINE_END

    if fmt not in ("text", "json", "jsonl"):
        raise fail(f"unknown format {fmt!r}: choose text, json or jsonl", 2)
    opts = SampleOptions(form=get_form(form), num=num, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed if seed is not None else secrets.randbelow(2**31), max_chars=max_chars,
                         best_of=best_of)
    from .config import Request

    request = Request(prompt=prompt, title=title, acrostic=acrostic, strict=strict, template=template, rhyme=rhyme,
                      no_rhyme=no_rhyme)
    _precheck(opts, request)
    from . import checkpoint
    from .sample import poem_record, prepare

    path = checkpoint_path or checkpoint.default_checkpoint()
    if output is not None and checkpoint_path is not None:
        from .paths import same_file

        if same_file(output, checkpoint_path):
            raise UsageError(f"--output {output} is the checkpoint: choose another path")
    generator, opts, rules = prepare(checkpoint.load(path), opts, request)
    show_title = title is None
    candidates = opts.best_of if opts.temperature > 0 else 1
    stream = output is None and fmt == "text" and num == 1 and candidates == 1 and sys.stdout.isatty()
    if stream:
        def on_title(row: int, text: str) -> None:
            if show_title and text:
                write_stdout(f"《{text}》\n")

        def on_char(row: int, ch: str) -> None:
            write_stdout(ch + ("\n" if ch in LINE_END else ""))

        poems = generator.generate(opts, on_char=on_char, on_title=on_title, verse=rules)
        write_stdout("\n" if poems[0].body and poems[0].body[-1] not in LINE_END else "")
        return

    def render(batch, start: int) -> str:
        if fmt == "text":
            return "".join(("\n" if start + i else "") + (f"《{p.title}》\n" if show_title and p.title else "")
                           + "\n".join(p.lines) + "\n" for i, p in enumerate(batch))
        records = [poem_record(p, start + i, opts, strict, path) for i, p in enumerate(batch)]
        if fmt == "jsonl":
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in records)

    parts, done = [], 0
    with StageProgress(quiet=not (sys.stderr.isatty() and candidates * num > 64)) as progress:
        for batch in generator.iter_generate(opts, verse=rules):
            text = render(batch, done)
            done += len(batch)
            progress(f"drawing {plural(candidates, 'candidate')} per poem", done, num)
            if output is None and fmt != "json":
                if not write_stdout(text):
                    return
            else:
                parts.append(text)
    if fmt == "json":
        parts = ["[\n" + ",\n".join(p for p in parts if p) + "\n]\n"]
    if parts:
        emit("".join(parts), output, (path,))


def _precheck(opts: SampleOptions, request) -> None:
    """Option errors that need no model, found before torch loads."""
    check = SampleOptions(**{**opts.__dict__, "prompt": "", "acrostic": "", "title": None})
    check.validate()
    if opts.form is None and (request.strict or request.rhyme):
        flag_name = "--strict" if request.strict else "--rhyme"
        raise UsageError(f"{flag_name} needs a regulated form: --form wujue, qijue, wulv or qilv")
    if request.template and not request.strict:
        raise UsageError("--template needs --strict")
    if request.rhyme and request.no_rhyme:
        raise UsageError("--rhyme and --no-rhyme contradict each other: drop one")


@app.command("info", short_help="A model's card: shape, corpus, val and test figures.",
    epilog=examples("poetgen info", "poetgen info -c runs/tiny/best.pt --json"))
@handle_errors
def info_cmd(checkpoint_path: CheckpointOpt = None, as_json: JsonOpt = False) -> None:
    """Print a model's card: architecture, parameters, corpus, validation and test figures."""
    from . import checkpoint

    card = checkpoint.describe(checkpoint.read(checkpoint_path or checkpoint.default_checkpoint()))
    if as_json:
        write_stdout(json.dumps(card, ensure_ascii=False, indent=1) + "\n")
        return
    lines = []
    for key in ("checkpoint", "size_mb", "format_version", "architecture", "parameters", "vocab_size", "script",
                "tone_table", "corpus", "corpus_hash", "step", "val", "test", "trained", "device", "resumable"):
        value = card[key]
        if key in ("val", "test"):
            value = _figures(value) if value and "record" in value and "body" in value else (
                f"record perplexity {value['record']['perplexity']:.2f}" if value and "record" in value
                else "not measured (run poetgen export)")
        elif key == "corpus" and isinstance(value, dict):
            value = f"{value.get('package')}@{value.get('version')}"
        elif key == "parameters":
            value = f"{value:,}"
        lines.append(f"{key:>14}: {value}")
    write_stdout("\n".join(lines) + "\n")


@app.command("export", short_help="Turn a trained best.pt into a small model to ship.",
    epilog=examples("poetgen export -c runs/small/best.pt -o checkpoints/poetgen-default.pt",
                                       "poetgen export -c runs/tiny/best.pt -o tiny.pt --no-test --full"))
@handle_errors
def export_cmd(
    checkpoint_path: Annotated[Path, typer.Option("--checkpoint", "-c", help="The trained model (a best.pt).",
                                                  metavar="FILE")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the shipped model.",
                                         metavar="FILE")],
    data_dir: DataDirOpt = None,
    half: Annotated[bool, typer.Option("--half/--full", help="Store weights as fp16 (half the size).")] = True,
    test: Annotated[bool, typer.Option("--test/--no-test", help="Evaluate val and test as shipped and record "
                                       "them in the file.")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Make a shipped model: weights only (fp16 by default) with the corpus's tone table inside, and the
    val/test figures measured on the file as written."""
    from . import checkpoint, evaluate
    from .train import corpus_tones

    root = _data_dir(data_dir)
    tones = corpus_tones(root)

    def measure(path: Path) -> dict:
        figures = {}
        with StageProgress(quiet) as progress:
            for split in ("val", "test"):
                r = evaluate.run(path, split=split, data_dir=root,
                                 progress=lambda d, t, s=split: progress(f"evaluating {s}", d, t))
                figures[split] = {k: r[k] for k in ("record", "body", "chars", "body_chars", "unknown")}
                if not quiet:
                    typer.echo(f"{split}: {_figures(r)}", err=True)
        return figures

    ckpt = checkpoint.export(checkpoint_path, output, tones=tones, half=half, measure=measure if test else None)
    if not quiet:
        typer.echo(f"wrote {ckpt.path} ({ckpt.path.stat().st_size / 1e6:.1f} MB)", err=True)


# ---------------------------------------------------------------------------------------------
# pictures

PngOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Also draw the picture into this PNG file "
                                                "(needs `pip install 'poetgen[plot]'`).", metavar="FILE.png",
                                                show_default="no picture, text only")]


@app.command("plot", short_help="Training curves of runs: val bits/char against steps and time.",
    epilog=examples("poetgen plot runs/cells-rnn runs/cells-gru runs/cells-lstm -o cells.png",
                    "poetgen plot runs/tiny"))
@handle_errors
def plot_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (the --out of `poetgen train`).",
                                               show_default=False)],
    output: PngOpt = None,
) -> None:
    """Draw validation bits/char (and train loss) against steps and wall time for runs, one line each,
    labelled with cell and size; print a compact text rendering."""
    from . import plot

    loaded = [plot.read_run(r) for r in runs]
    if output is not None:
        plot.training_curves(loaded, output)
    write_stdout(plot.runs_text(loaded) + "\n")
    if output is not None:
        typer.echo(f"wrote {output}", err=True)


inspect_app = typer.Typer(help="See inside a model: gradients through time, units that track the verse, gates.",
                          context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(inspect_app, name="inspect", short_help="See inside a model: gradients, units, gates (pictures).")
PoemsOpt = Annotated[int, typer.Option("--poems", help="How many val poems to measure over.", min=1)]


def _val_records(data_dir: Path | None, limit: int, script: str | None) -> list[tuple[str, str]]:
    from . import corpus

    root = _data_dir(data_dir)
    meta = corpus.load_meta(root)
    if script is not None and meta.get("script") != script:
        raise UsageError(f"the corpus in {root} is {meta.get('script')} and the model {script}: pass --data-dir "
                         "with a corpus of the model's script")
    out = []
    for poem in corpus.iter_poems(root, "val"):
        out.append((poem.title, poem.body))
        if len(out) >= limit:
            break
    return out


@inspect_app.command("gradients", short_help="How far back the loss reaches: ‖∂L_t/∂h_{t−k}‖ against k.",
    epilog=examples("poetgen inspect gradients --cell rnn --cell gru --cell lstm -o gradients.png",
                    "poetgen inspect gradients -c checkpoints/poetgen-default.pt -c runs/cells-rnn/best.pt --json"))
@handle_errors
def inspect_gradients(
    checkpoints: Annotated[Optional[list[Path]], typer.Option("--checkpoint", "-c", help="A trained model (repeat "
                                                              "for several).", metavar="FILE",
                                                              show_default="none")] = None,
    cells: Annotated[Optional[list[str]], typer.Option("--cell", help="A freshly initialized model of this cell "
                                                       "(rnn, gru, lstm; repeat for several).",
                                                       show_default="none")] = None,
    hidden_size: Annotated[int, typer.Option("--hidden-size", help="Hidden size of the fresh models.")] = 256,
    layers: Annotated[int, typer.Option("--layers", help="Layers of the fresh models.")] = 2,
    max_k: Annotated[int, typer.Option("--max-k", help="The farthest distance measured, in characters.",
                                       min=1, max=2000)] = 200,
    samples: Annotated[int, typer.Option("--samples", help="Windows of val text averaged over.", min=1)] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Chooses the windows and the fresh weights.")] = 0,
    data_dir: DataDirOpt = None,
    output: PngOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure, over real val poems, the norm of the gradient of the loss at step t with respect to the
    hidden state at step t−k, averaged and divided by its value at k = 0: where a tanh RNN's falls
    away, an LSTM's holds. Give trained checkpoints, fresh cells, or both."""
    if not checkpoints and not cells:
        raise fail("give --checkpoint FILE and/or --cell rnn|gru|lstm", 2)
    for cell in cells or []:
        if cell not in CELLS:
            raise fail(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}", 2)
    import torch

    from . import checkpoint, corpus, inspect
    from .data import load_split
    from .model import LanguageModel
    from .vocab import Vocab

    root = _data_dir(data_dir)
    corpus.load_meta(root)
    vocab = Vocab.load(root / "vocab.json")
    stream = load_split(root, "val")
    curves = {}
    with StageProgress(not sys.stderr.isatty()) as progress:
        models = [(str(c), checkpoint.load(c)) for c in checkpoints or []]
        for label, ck in models:
            ck.require_vocab(vocab, "pass --data-dir with the corpus it was trained on")
            progress(f"gradients of {label}", 0, 1)
            where = f"{Path(label).parent.name}/{Path(label).name}" if Path(label).parent.name else Path(label).name
            curves[f"{ck.config.cell} {ck.config.num_layers}x{ck.config.hidden_size} ({where})"] = \
                inspect.gradient_norms(ck.model, stream, max_k, samples, seed)
            progress(f"gradients of {label}", 1, 1)
        for cell in cells or []:
            torch.manual_seed(seed)
            model = LanguageModel(ModelConfig(len(vocab), emb_size=max(8, hidden_size // 2), hidden_size=hidden_size,
                                              num_layers=layers, cell=cell))
            progress(f"gradients of a fresh {cell}", 0, 1)
            curves[f"{cell} {layers}x{hidden_size} (fresh)"] = inspect.gradient_norms(model, stream, max_k, samples,
                                                                                     seed)
            progress(f"gradients of a fresh {cell}", 1, 1)
    if output is not None:
        from . import plot

        plot.gradient_curves(curves, output)
        typer.echo(f"wrote {output}", err=True)
    if as_json:
        write_stdout(json.dumps({"max_k": max_k, "samples": samples, "curves": curves}, ensure_ascii=False) + "\n")
        return
    ks = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if k <= max_k]
    width = max(len(k) for k in curves)
    lines = [f"{'model':<{width}}  " + "  ".join(f"{'k=' + str(k):>8}" for k in ks)]
    for label, values in curves.items():
        lines.append(f"{label:<{width}}  " + "  ".join(f"{values[k]:>8.1e}" for k in ks))
    write_stdout("\n".join(lines) + "\n")


@inspect_app.command("cells", short_help="A poem coloured by one unit's activation; --find the units that "
                     "track the verse.",
    epilog=examples("poetgen inspect cells --poem 秋色无限春，春风于何人。故乡千万里，可见未相亲。 --find",
                    "poetgen inspect cells --poem 千里两岐响，南楼临水空。 --unit '1:cell 42' -o unit.png"))
@handle_errors
def inspect_cells(
    checkpoint_path: CheckpointOpt = None,
    poem: Annotated[Optional[str], typer.Option("--poem", help="The poem to show.",
                                                show_default="the first val poem")] = None,
    title: Annotated[str, typer.Option("--title", help="Its title (read before the poem).",
                                       show_default="none")] = "",
    unit: Annotated[Optional[str], typer.Option("--unit", help="The unit to show, 'LAYER:KIND INDEX' (KIND: "
                                                "hidden, cell, input gate, forget gate, output gate).",
                                                show_default="the best --find unit for position in line, "
                                                "else 0:hidden 0")] = None,
    find: Annotated[bool, flag("--find", "Search every unit of every layer, over val poems, for those that "
                               "track position in line, line number, distance to punctuation, rhyme position "
                               "and title vs body.")] = False,
    poems: PoemsOpt = 300,
    data_dir: DataDirOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the colouring as .png "
                                                   "(needs poetgen[plot]) or .html.", metavar="FILE",
                                                   show_default="terminal only")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a poem with each character's background coloured by one unit's activation after reading it
    (in colour in a terminal, as numbers when piped or with NO_COLOR); --find ranks the units."""
    if output is not None and output.suffix.lower() not in (".png", ".html"):
        raise fail(f"--output {output}: give a .png or .html file name", 2)
    from . import checkpoint, inspect
    from .text import full_width_marks, to_script

    ck = checkpoint.load(checkpoint_path or checkpoint.default_checkpoint())
    found = None
    if find or poem is None:
        records = _val_records(data_dir, poems, ck.meta.script)
        if poem is None:
            title, poem = records[0]
    poem = to_script("".join(full_width_marks(poem).split()), ck.meta.script)
    title = to_script("".join(title.split()), ck.meta.script)
    unknown = ck.vocab.unknown(title + poem)
    if unknown:
        raise fail(f"not in the model's vocabulary: {' '.join(unknown)}: use other characters", 2)
    if find:
        found = inspect.find_units(ck.model, ck.vocab, records)
    tr = inspect.trace(ck.model, inspect.record_ids(ck.vocab, title, poem), ck.vocab)
    if unit is None:
        unit = found["position in line"][0][0] if found and found["position in line"] else "0:hidden 0"
    values = inspect.unit_values(tr, unit)
    start = tr.tokens.index("<sep>") + 1
    chars, acts = tr.tokens[start:], values[start:].tolist()
    if as_json:
        write_stdout(json.dumps({"unit": unit, "chars": chars, "activations": [round(v, 4) for v in acts],
                                 "find": found}, ensure_ascii=False) + "\n")
    else:
        if found:
            lines = []
            for prop, best in found.items():
                lines.append(f"{prop}: " + ", ".join(f"{u} (r = {r:+.2f})" for u, r in best))
            write_stdout("\n".join(lines) + "\n\n")
        write_stdout(_render_activations(unit, chars, acts))
    if output is not None:
        if output.suffix.lower() == ".png":
            from . import plot

            plot.activation_strip("".join(chars), acts, f"unit {unit}", output)
        else:
            from .paths import atomic_write_text

            atomic_write_text(output, _activations_html(unit, chars, acts))
        typer.echo(f"wrote {output}", err=True)


def _colour(v: float) -> tuple[int, int, int]:
    """-1 → blue, 0 → white, +1 → red."""
    v = max(-1.0, min(1.0, v))
    return (255, int(255 * (1 - v)), int(255 * (1 - v))) if v >= 0 else (int(255 * (1 + v)), int(255 * (1 + v)), 255)


def _render_activations(unit: str, chars: list[str], acts: list[float]) -> str:
    if plain_output() or not sys.stdout.isatty():
        rows = [f"unit {unit}"]
        line = []
        for ch, v in zip(chars, acts, strict=True):
            line.append(f"{ch}{v:+.2f}")
            if ch in "，。？！；：、":
                rows.append(" ".join(line))
                line = []
        if line:
            rows.append(" ".join(line))
        return "\n".join(rows) + "\n"
    from rich.text import Text

    text = Text(f"unit {unit} (blue −1, white 0, red +1)\n")
    for ch, v in zip(chars, acts, strict=True):
        r, g, b = _colour(v)
        text.append(ch, style=f"black on rgb({r},{g},{b})")
        if ch in "，。？！；：、":
            text.append("\n")
    out = console(stderr=False)
    with out.capture() as captured:
        out.print(text)
    return captured.get()


def _activations_html(unit: str, chars: list[str], acts: list[float]) -> str:
    import html

    spans = []
    for ch, v in zip(chars, acts, strict=True):
        r, g, b = _colour(v)
        spans.append(f'<span title="{v:+.3f}" style="background:rgb({r},{g},{b})">{html.escape(ch)}</span>'
                     + ("<br>" if ch in "，。？！；：、" else ""))
    return ("<!doctype html><meta charset=utf-8><title>poetgen unit</title>"
            f"<p>unit {html.escape(unit)} (blue −1, white 0, red +1)</p>"
            f"<p style='font-size:28px;line-height:1.6'>{''.join(spans)}</p>\n")


@inspect_app.command("gates", short_help="An LSTM's mean input/forget/output gates along the line.",
    epilog=examples("poetgen inspect gates -o gates.png", "poetgen inspect gates --chars 5 --layer 1 --json"))
@handle_errors
def inspect_gates(
    checkpoint_path: CheckpointOpt = None,
    chars: Annotated[int, typer.Option("--chars", help="Lines of this many characters (5 or 7).")] = 7,
    layer: Annotated[int, typer.Option("--layer", help="Which layer's gates.", min=0)] = 0,
    poems: PoemsOpt = 300,
    data_dir: DataDirOpt = None,
    output: PngOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mean gate activations of an LSTM by position in the line, over val poems: does the forget gate
    open at line ends?"""
    from . import checkpoint, inspect
    from .forms import detect

    ck = checkpoint.load(checkpoint_path or checkpoint.default_checkpoint())
    if layer >= ck.config.num_layers:
        raise fail(f"--layer {layer}: the model has {plural(ck.config.num_layers, 'layer')} (0-based)", 2)
    records = [r for r in _val_records(data_dir, 100_000, ck.meta.script)
               if (f := detect(r[1])) is not None and f.chars == chars][:poems]
    means = inspect.gate_means(ck.model, ck.vocab, records, chars, layer)
    labels = [str(i + 1) for i in range(chars)] + ["mark"]
    if output is not None:
        from . import plot

        plot.gate_curves(means, labels, output)
        typer.echo(f"wrote {output}", err=True)
    if as_json:
        write_stdout(json.dumps({"layer": layer, "chars": chars, "poems": len(records), "positions": labels,
                                 "means": means}, ensure_ascii=False) + "\n")
        return
    lines = [f"layer {layer}, {len(records)} poems of {chars}-character lines", "position     " +
             " ".join(f"{x:>6}" for x in labels)]
    for gate, values in means.items():
        lines.append(f"{gate:<12} " + " ".join(f"{v:>6.3f}" for v in values))
    write_stdout("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# check


@app.command("check", short_help="Check the 格律 of poems (exit 1 when one fails).",
    epilog=examples("poetgen check 秋色无限春，春风于何人。故乡千万里，可见未相亲。",
                                      "poetgen check --file poems.txt --json",
                                      "poetgen sample --form qilv --strict | poetgen check"))
@handle_errors
def check_cmd(
    poem: Annotated[Optional[str], typer.Argument(help="The poem, quoted (- reads stdin).",
                                                  show_default="--file, else stdin")
                    ] = None,
    extra: Annotated[Optional[list[str]], typer.Argument(hidden=True)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Read poems from this UTF-8 file, separated by "
                                                 "blank lines.", metavar="FILE", show_default="stdin")] = None,
    checkpoint_path: CheckpointOpt = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Take the tone table of this prepared corpus instead of the model's.", metavar="DIR",
        show_default="the model's")] = None,
    as_json: Annotated[bool, flag("--json", "One JSON object per poem.")] = False,
) -> None:
    """Check 格律: form, 平仄 under each line, template, violations, rhyme group, 孤平 and 三平尾.

    Exits 0 when every poem passes, 1 when one does not, 2 on bad input."""
    from . import prosody
    from .text import is_han, to_script

    if extra:
        raise fail("the poem is more than one argument: quote it (poetgen check '秋色无限春，…') or use --file", 2)
    if poem == "-" and file is None:  # the usual name of stdin
        poem, file = None, Path("-")
    if poem is not None and file is not None:
        raise fail("give the poem as an argument or --file, not both", 2)
    tones = prosody.ToneTable.from_counts(_tone_counts(checkpoint_path, data_dir))
    rhymes = prosody.load_rhymes("simplified")
    ok = True
    reader_gone = False
    count = 0
    for count, text in enumerate(prosody.read_poems(_check_lines(poem, file)), 1):
        if not any(is_han(c) for c in text):
            hint = " (to read a file, use --file)" if poem is not None else ""
            raise fail(f"poem {count} has no Chinese characters: give the poem's text{hint}", 2)
        r = prosody.check_poem(to_script(text, "simplified"), tones, rhymes)
        ok = ok and r.ok
        if not reader_gone:
            out = json.dumps(r.to_dict(), ensure_ascii=False) + "\n" if as_json else \
                ("\n" if count > 1 else "") + _render_check(r) + "\n"
            reader_gone = not write_stdout(out)  # keep checking: the exit code is the verdict
    if count == 0:
        raise fail("no poem given: the input is empty", 2)
    if not ok:
        raise typer.Exit(1)


def _tone_counts(checkpoint_path: Path | None, data_dir: Path | None) -> dict:
    """The tone counts `check` uses: a prepared corpus's if --data-dir is given, else the model's."""
    from . import checkpoint, prosody

    if data_dir is not None:
        return prosody.load_tone_counts(data_dir / "tones.json")
    path = checkpoint_path or checkpoint.default_checkpoint()
    _, _, _, counts = checkpoint.read_header(path)
    if counts is None:
        raise UsageError(f"{path} has no tone table: export it with `poetgen export`, or pass --data-dir")
    return counts


def _check_lines(poem: str | None, file: Path | None):
    """The lines of check's input: the argument, a file or stdin."""
    from .text import iter_lines

    return poem.splitlines() if poem is not None else iter_lines(file)


def _render_check(r) -> str:
    head = r.form if r.template is None else f"{r.form} {r.template}"
    verdict = "ok" if r.ok else r.reason if r.template is None else "fails"
    lines = [f"{head}: {verdict}"]
    for line, tones in zip(r.lines, r.tones, strict=False):
        lines.append(line)
        lines.append(tones)
    for v in r.violations:
        lines.append(f"violation: line {v['line']} character {v['position']} {v['char']} should be {v['expected']}")
    if r.rhymes:
        lines.append("rhymes: " + " ".join(f"{x['char']}({'/'.join(x['groups']) or '?'})" for x in r.rhymes)
                     + f" → {r.rhyme_group or 'no shared 平声 group'}")
    for w in r.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


class _ClosedStream:
    """Stands in for a standard stream the shell closed (`>&-`): any write is an error we report."""

    closed = True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise ValueError("I/O operation on closed file")

    def flush(self) -> None:
        pass


def main() -> None:
    """Entry point of the `poetgen` console script: usage errors too end in one line on stderr."""
    if sys.stdout is None:
        sys.stdout = _ClosedStream()
    if sys.stderr is None:
        sys.stderr = _ClosedStream()
    try:
        code = app(prog_name="poetgen", standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
        fail("interrupted")
    except Exception as e:  # noqa: BLE001 - Click's usage errors (no such option, bad value, missing option)
        if not hasattr(e, "format_message"):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # `poetgen` alone, or a group alone: its help
            write_stdout(e.format_message() + "\n")
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "poetgen"
        code = getattr(e, "exit_code", 2)
        fail(f"{e.format_message()} (see `{where} -h`)", code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
