"""The poetgen command line: thin Typer commands over the library.

Heavy modules (torch, numpy, opencc) are imported inside the commands, so `poetgen --help`
stays fast."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import PoetgenError

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="poetgen: write and check Tang poems with a character-level LSTM language model.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
corpus_app = typer.Typer(
    help="Fetch and prepare the 全唐诗 corpus (chinese-poetry@2.0.1).",
    context_settings=CONTEXT,
    no_args_is_help=True,
)
app.add_typer(corpus_app, name="corpus")

DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Prepared-corpus folder (default: $POETGEN_DATA, corpus/ in a checkout, "
                 "else the per-user data folder).", show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    typer.echo(f"poetgen: error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn):
    """Turn domain errors into one stderr line and an exit code; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PoetgenError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("poetgen: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class StageProgress:
    """A rich progress display on stderr fed by the library's progress(stage, done, total) calls."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        console = stderr_console()
        self.plain = not self.quiet and not console.is_terminal
        if not self.quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.plain and done == total:
            typer.echo(f"{stage}: done ({done}/{total})", err=True)
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
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """poetgen: write and check Tang poems with a character-level LSTM language model."""


# ---------------------------------------------------------------------------------------------
# corpus

FromOpt = Annotated[
    Optional[Path],
    typer.Option("--from", help="A local chinese-poetry-2.0.1.tgz or extracted package folder (offline).",
                 show_default=False),
]
ScriptOpt = Annotated[str, typer.Option("--script", help="simplified (OpenCC t2s) or traditional.")]
MinCountOpt = Annotated[int, typer.Option("--min-count", help="Keep characters seen at least this often in train.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]


def _data_dir(data_dir: Path | None) -> Path:
    from .paths import resolve_data_dir

    return resolve_data_dir(data_dir)


def _report_build(result, quiet: bool) -> None:
    if quiet:
        return
    meta = result.meta
    p = meta["poems"]
    typer.echo(
        f"built {meta['script']} corpus in {result.data_dir}: {p['train']} train / {p['val']} val / "
        f"{p['test']} test poems, vocabulary {meta['vocab_size']}, dropped {sum(meta['dropped'].values())}",
        err=True,
    )


@corpus_app.command("fetch")
@handle_errors
def corpus_fetch(
    data_dir: DataDirOpt = None,
    source: FromOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Download chinese-poetry@2.0.1 with `npm pack`, verify its sha512 integrity, and cache it."""
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
        path = corpus.fetch(root, source, progress=progress)
    if not quiet:
        typer.echo(f"corpus package ready: {path}", err=True)


@corpus_app.command("build")
@handle_errors
def corpus_build(
    data_dir: DataDirOpt = None,
    source: FromOpt = None,
    script: ScriptOpt = "simplified",
    min_count: MinCountOpt = 2,
    quiet: QuietOpt = False,
) -> None:
    """Clean, convert, split and tokenize the fetched package into the prepared corpus."""
    _build(data_dir, source, script, min_count, quiet, fetch_first=False)


def _build(data_dir, source, script: str, min_count: int, quiet: bool, fetch_first: bool) -> None:
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
        if fetch_first:
            source = corpus.fetch(root, source, progress=progress)
        result = corpus.build(root, source, script=script, min_count=min_count, progress=progress)
    _report_build(result, quiet)


@corpus_app.command("prepare")
@handle_errors
def corpus_prepare(
    data_dir: DataDirOpt = None,
    source: FromOpt = None,
    script: ScriptOpt = "simplified",
    min_count: MinCountOpt = 2,
    quiet: QuietOpt = False,
) -> None:
    """Fetch and build in one step: the command to run before training."""
    _build(data_dir, source, script, min_count, quiet, fetch_first=True)


@corpus_app.command("stats")
@handle_errors
def corpus_stats(
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    top: Annotated[int, typer.Option("--top", help="How many frequent characters to show.")] = 20,
) -> None:
    """Poems per split, forms, characters, vocabulary size, frequent characters and drop reasons."""
    from . import corpus

    meta = corpus.load_meta(_data_dir(data_dir))
    if as_json:
        keys = ("poems", "tokens", "characters", "vocab_size", "dropped", "source", "script", "forms",
                "poems_read", "unknown_tokens", "corpus_hash")
        out = {k: meta[k] for k in keys}
        out["top_chars"] = meta["top_chars"][:top]
        typer.echo(json.dumps(out, ensure_ascii=False, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    console.print(table)
    console.print(f"vocabulary: {meta['vocab_size']:,} tokens (min count {meta['min_count']})")
    console.print("most frequent: " + " ".join(f"{c}{n}" for c, n in meta["top_chars"][:top]))
    drops = Table(title=f"dropped of {meta['poems_read']:,} poems read")
    drops.add_column("reason")
    drops.add_column("poems", justify="right")
    for reason, n in meta["dropped"].items():
        drops.add_row(reason, f"{n:,}")
    console.print(drops)


# ---------------------------------------------------------------------------------------------
# train / eval


@app.command("train")
@handle_errors
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder: best.pt, last.pt, metrics.jsonl.")] = Path(
        "runs/default"
    ),
    data_dir: DataDirOpt = None,
    preset: Annotated[str, typer.Option("--preset", help="Model size: tiny, small, base or large.")] = "small",
    cell: Annotated[Optional[str], typer.Option("--cell", help="lstm, gru or rnn (tanh). [default: lstm]",
                                                show_default=False)] = None,
    emb_size: Annotated[Optional[int], typer.Option("--emb-size", help="Embedding size (overrides the preset).",
                                                    show_default=False)] = None,
    hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="Hidden size (overrides the preset).",
                                                       show_default=False)] = None,
    num_layers: Annotated[Optional[int], typer.Option("--layers", help="Stacked layers (overrides the preset).",
                                                      show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", help="Dropout between layers and on the output.",
                                                     show_default=False)] = None,
    emb_dropout: Annotated[Optional[float], typer.Option("--emb-dropout", help="Dropout on the embeddings.",
                                                         show_default=False)] = None,
    untied: Annotated[bool, typer.Option("--untied", help="Do not tie input and output embeddings.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows B of the (B, T) window.")] = 64,
    bptt: Annotated[int, typer.Option("--bptt", help="Window length T of truncated BPTT.")] = 64,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the train split. [default: 10]",
                                                  show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps.",
                                                     show_default=False)] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Stop after this much training "
                                                         "time (the cosine schedule follows it).",
                                                         show_default=False)] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw (warmup + cosine) or sgd (step decay).")] = (
        "adamw"
    ),
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate. [default: 2e-3 adamw, 1.0 sgd]",
                                                show_default=False)] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay on matrices.")] = 0.01,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps (adamw).")] = 200,
    clip: Annotated[float, typer.Option("--clip", help="Global gradient-norm clipping threshold.")] = 1.0,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate every N steps.")] = 500,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Stop after N evaluations without "
                                                    "improvement.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (CPU runs repeat exactly).")] = 1337,
    device: Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 elsewhere), fp32, or "
                                           "bf16 (also faster on CPUs with AVX512-BF16 or AMX).")] = "auto",
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="Start from this checkpoint's weights "
                                                      "(its shape; fresh optimizer and schedule).",
                                                      show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the language model with truncated backpropagation through time."""
    from . import corpus
    from .model import PRESETS, LSTMConfig
    from .train import TrainConfig, Trainer
    from .vocab import Vocab

    root = _data_dir(data_dir)
    meta = corpus.load_meta(root)
    vocab = Vocab.load(root / "vocab.json")
    last = out / "last.pt"
    if resume:
        from . import checkpoint

        if not last.is_file():
            raise fail(f"nothing to resume in {out}: it has no last.pt; pass the --out of an earlier run, "
                       "or drop --resume", 2)
        payload = checkpoint.load_payload(last)
        if "train_state" not in payload:
            raise fail(f"{last} holds no training state: resume from a last.pt that `poetgen train` wrote")
        model_config = LSTMConfig.from_dict(payload["model_config"])
        train_config = TrainConfig.from_dict(payload["train_state"]["train_config"])
        for name, value in (("epochs", epochs), ("max_steps", max_steps), ("max_minutes", max_minutes)):
            if value is not None:
                setattr(train_config, name, value)
    else:
        if last.exists():
            raise fail(f"{out} already holds a run: pass --resume to continue it, or another --out")
        if init_from is not None:
            from . import checkpoint

            if any(v is not None for v in (cell, emb_size, hidden_size, num_layers)) or untied:
                raise fail("--init-from takes the model's shape from the checkpoint: drop --cell, --emb-size, "
                           "--hidden-size, --layers and --untied", 2)
            shape = LSTMConfig.from_dict(checkpoint.load_payload(init_from)["model_config"]).to_dict()
            shape.pop("vocab_size")
            untied = not shape.pop("tie_weights")
        elif preset not in PRESETS:
            raise fail(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}", 2)
        else:
            shape = dict(PRESETS[preset])
        for name, value in (("cell", cell), ("emb_size", emb_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers), ("dropout", dropout), ("emb_dropout", emb_dropout)):
            if value is not None:
                shape[name] = value
        model_config = LSTMConfig(vocab_size=len(vocab), tie_weights=not untied, **shape)
        train_config = TrainConfig(
            batch_size=batch_size, bptt=bptt, epochs=10 if epochs is None else epochs, max_steps=max_steps,
            max_minutes=max_minutes,
            optimizer=optimizer, lr=lr if lr is not None else (1.0 if optimizer == "sgd" else 2e-3),
            weight_decay=weight_decay, warmup_steps=warmup_steps, clip=clip, eval_every=eval_every,
            patience=patience, seed=seed, device=device, precision=precision,
            init_from=str(init_from) if init_from is not None else None,
        )
    train_stream = corpus.load_tokens(root, "train")
    val_stream = corpus.load_tokens(root, "val")
    with TrainProgress(quiet) as progress:
        trainer = Trainer(model_config, train_config, vocab, train_stream, val_stream, out, meta,
                          on_event=progress.event)
        if resume:
            trainer.resume(last)
        progress.start(trainer)
        summary = trainer.run()
    if not quiet:
        print_train_summary(summary)
    if as_json:
        typer.echo(json.dumps(summary))


class TrainProgress:
    """The rich progress bar of `poetgen train`, on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.val_ppl = None

    def __enter__(self):
        console = stderr_console()
        self.plain = not self.quiet and not console.is_terminal
        if not self.quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val ppl {task.fields[ppl]}  {task.fields[tps]} tok/s"),
                TimeRemainingColumn(), console=console,
            )
            self.progress.__enter__()
        return self

    def start(self, trainer) -> None:
        if self.progress is not None:
            ppl = trainer.last_val["perplexity"] if trainer.last_val else None
            self.task = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.step,
                                               epoch=trainer.epoch, loss="-", ppl=_fmt(ppl), tps="-")

    def event(self, e: dict) -> None:
        if self.plain and e["event"] == "eval":
            typer.echo(f"step {e['step']} epoch {e['epoch']}: train loss {e['train_loss']:.3f}, val loss "
                       f"{e['val_loss']:.4f}, val ppl {e['val_ppl']:.2f}, {e['tokens_per_s']:,.0f} tok/s, "
                       f"{e['elapsed_s']:.0f} s", err=True)
        if self.progress is None or self.task is None:
            return
        if e["event"] == "eval":
            self.val_ppl = e["val_ppl"]
        fields = {"epoch": e.get("epoch", 0), "ppl": _fmt(self.val_ppl)}
        if e.get("train_loss") is not None:
            fields["loss"] = _fmt(e["train_loss"], 3)
        if e.get("tokens_per_s"):
            fields["tps"] = f"{e['tokens_per_s']:,.0f}"
        self.progress.update(self.task, completed=e["step"], **fields)

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
    stderr_console().print(table)


@app.command("eval")
@handle_errors
def eval_cmd(
    checkpoint_path: Annotated[Optional[Path], typer.Option("--checkpoint", help="Model file (default: the shipped "
                                                            "model).", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="val or test of the prepared corpus.",
                                                 show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="UTF-8 text, one poem per line.",
                                                 show_default=False)] = None,
    data_dir: DataDirOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure nats/char, bits/char and perplexity on a split or a text file."""
    from . import evaluate

    if (split is None) == (file is None):
        raise fail("give exactly one of --split val|test or --file TEXT", 2)
    result = evaluate.run(checkpoint_path, split=split, file=file, data_dir=_data_dir(data_dir) if split else None,
                          device=device)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['source']}: {result['nats_per_char']:.4f} nats/char, {result['bits_per_char']:.4f} "
               f"bits/char, perplexity {result['perplexity']:.2f} over {result['chars']:,} characters "
               f"({result['unknown']:,} unknown)")


# ---------------------------------------------------------------------------------------------
# sample / info

CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option("--checkpoint", "-c", help="Model file (default: the shipped model).", show_default=False),
]


@app.command("sample")
@handle_errors
def sample_cmd(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The poem's beginning, kept verbatim.")] = "",
    title: Annotated[Optional[str], typer.Option("--title", "-t", help="A title to condition on (default: the "
                                                 "model writes one).", show_default=False)] = None,
    form: Annotated[str, typer.Option("--form", "-f", help="free, wujue (五绝), qijue (七绝), wulv (五律) or "
                                      "qilv (七律).")] = "free",
    acrostic: Annotated[str, typer.Option("--acrostic", "-a", help="藏头诗: these characters start the lines.")] = "",
    num: Annotated[int, typer.Option("--num", "-n", help="How many poems (sampled together as one batch).")] = 1,
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k likeliest characters only.",
                                                 show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the smallest set reaching "
                                                   "this probability, in (0, 1].", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed: the same seed and options give "
                                                "the same poems.", show_default=False)] = None,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Longest body in free form.")] = 120,
    strict: Annotated[bool, typer.Option("--strict", help="Enforce 格律 (平仄 template, one 平水韵 rhyme group, "
                                         "no repeated rhyme, no 孤平) with --form.")] = False,
    template: Annotated[Optional[str], typer.Option("--template", help="With --strict: ping-plain, ping-rhymed, "
                                                    "ze-plain or ze-rhymed (平起/仄起 × 首句不入韵/入韵).",
                                                    show_default=False)] = None,
    rhyme: Annotated[Optional[str], typer.Option("--rhyme", help="With --strict: rhyme in the group of this "
                                                 "character (e.g. 东).", show_default=False)] = None,
    data_dir: DataDirOpt = None,
    checkpoint_path: CheckpointOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json or jsonl.")] = "text",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file (atomically) "
                                                   "instead of stdout.", show_default=False)] = None,
) -> None:
    """Write poems. Poems go to stdout, one line per verse line, a blank line between poems."""
    import secrets

    from . import checkpoint
    from .forms import get_form
    from .sample import Generator, SampleOptions

    if fmt not in ("text", "json", "jsonl"):
        raise fail(f"unknown format {fmt!r}: choose text, json or jsonl", 2)
    the_form = get_form(form)
    path = checkpoint_path or checkpoint.default_checkpoint()
    model, vocab, meta = checkpoint.load(path)
    prompt, title, acrostic = (_to_model_script(x, meta) for x in (prompt.strip(), title, acrostic.strip()))
    title = title.strip() if title is not None else None
    unknown = vocab.unknown(prompt + (title or "") + acrostic)
    if unknown:
        raise fail(f"not in the model's vocabulary: {' '.join(unknown)}: use other characters", 2)
    opts = SampleOptions(prompt=prompt, title=title, form=the_form, acrostic=acrostic, num=num,
                         temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed if seed is not None else secrets.randbelow(2**31), max_chars=max_chars)
    opts.validate()
    constraint_for_row = None
    if strict:
        from . import prosody
        from .paths import resolve_data_dir
        from .sample import ProsodyMasks, strict_factory

        tones = prosody.load_tone_table(resolve_data_dir(data_dir))
        rhyme = _to_model_script(rhyme.strip(), meta) if rhyme else None
        masks = ProsodyMasks(vocab, tones, prosody.load_rhymes(meta.get("script") or "simplified"))
        constraint_for_row = strict_factory(opts, masks, template, rhyme, opts.seed)
    elif template or rhyme:
        raise fail("--template and --rhyme need --strict", 2)
    stream = output is None and fmt == "text" and num == 1 and sys.stdout.isatty()
    on_char = _streamer() if stream else None
    poems = Generator(model, vocab).generate(opts, on_char=on_char, constraint_for_row=constraint_for_row)
    if stream:
        sys.stdout.write("\n" if poems[0].body and poems[0].body[-1] not in "，。？！；：、" else "")
        sys.stdout.flush()
        return
    text = _render(poems, opts, fmt, path, strict)
    if output is not None:
        from .paths import atomic_write_text

        atomic_write_text(output, text)
    else:
        _write_stdout(text)


def _to_model_script(text: str | None, meta: dict) -> str | None:
    if not text or meta.get("script") != "simplified":
        return text
    from .corpus import make_converter

    return make_converter("simplified")(text)


def _streamer():
    def on_char(row: int, ch: str) -> None:
        try:
            sys.stdout.write(ch + ("\n" if ch in "，。？！；：、" else ""))
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()

    return on_char


def _render(poems, opts, fmt: str, path: Path, strict: bool = False) -> str:
    if fmt == "text":
        return "\n".join("\n".join(p.lines) + "\n" for p in poems)
    records = [
        {"text": p.body, "lines": p.lines, "title": p.title, "prompt": opts.prompt, "seed": opts.seed,
         "index": i, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
         "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p, "logprob": round(p.logprob, 4),
         "strict": strict,
         "chars": len(p.body), "checkpoint": str(path)}
        for i, p in enumerate(poems)
    ]
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return json.dumps(records, ensure_ascii=False, indent=1) + "\n"


def _quiet_broken_pipe() -> None:
    """The reader went away (`| head`): end quietly, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(0)


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()


@app.command("info")
@handle_errors
def info_cmd(
    checkpoint_path: CheckpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a model's card: architecture, parameters, corpus, validation and test figures."""
    from . import checkpoint

    path = checkpoint_path or checkpoint.default_checkpoint()
    payload = checkpoint.load_payload(path)
    cfg = payload["model_config"]
    meta = payload["meta"]
    params = sum(v.numel() for v in payload["state_dict"].values())
    card = {
        "checkpoint": str(path),
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "architecture": f"{cfg['num_layers']}-layer {cfg['cell'].upper()}, hidden {cfg['hidden_size']}, "
                        f"embedding {cfg['emb_size']}{', tied' if cfg.get('tie_weights') else ''}",
        "parameters": params,
        "model_config": cfg,
        "vocab_size": len(payload["vocab"]),
        "script": meta.get("script"),
        "corpus": meta.get("corpus_source"),
        "corpus_hash": meta.get("corpus_hash"),
        "step": meta.get("step"),
        "val": meta.get("val"),
        "test": meta.get("test"),
        "trained": meta.get("time"),
        "device": meta.get("device"),
        "train_config": meta.get("train_config"),
    }
    if as_json:
        typer.echo(json.dumps(card, ensure_ascii=False, indent=1))
        return
    for key in ("checkpoint", "size_mb", "architecture", "parameters", "vocab_size", "script", "corpus",
                "corpus_hash", "step", "val", "test", "trained", "device"):
        value = card[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        typer.echo(f"{key:>12}: {value}")


@app.command("export")
@handle_errors
def export_cmd(
    checkpoint_path: Annotated[Path, typer.Option("--checkpoint", "-c", help="The trained model (a best.pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the shipped model.")],
    data_dir: DataDirOpt = None,
    half: Annotated[bool, typer.Option("--half/--full", help="Store weights as fp16 (half the size).")] = True,
    test: Annotated[bool, typer.Option("--test/--no-test", help="Evaluate val and test as shipped and record "
                                       "them in the file.")] = True,
) -> None:
    """Make a shipped model: weights only (fp16 by default), the corpus's tone table beside it
    (tones.json, for check and --strict), and val/test figures measured on the file as written."""
    import shutil

    from . import checkpoint, evaluate
    from .paths import atomic_path

    root = _data_dir(data_dir)
    model, vocab, meta = checkpoint.load(checkpoint_path)
    meta = {k: v for k, v in meta.items() if k != "train_config"} | {"train_config": meta.get("train_config"),
                                                                      "exported_from": str(checkpoint_path)}
    checkpoint.save(output, model, vocab, meta, half=half)
    if test:
        for split in ("val", "test"):
            result = evaluate.run(output, split=split, data_dir=root)
            meta[split] = {k: result[k] for k in ("nats_per_char", "bits_per_char", "perplexity", "chars", "unknown")}
            typer.echo(f"{split}: {result['nats_per_char']:.4f} nats/char, {result['bits_per_char']:.4f} bits/char, "
                       f"perplexity {result['perplexity']:.2f}", err=True)
        checkpoint.save(output, model, vocab, meta, half=half)
    tones = root / "tones.json"
    if tones.is_file():
        with atomic_path(output.parent / "tones.json") as tmp:
            shutil.copyfile(tones, tmp)
    typer.echo(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)", err=True)


# ---------------------------------------------------------------------------------------------
# check


@app.command("check")
@handle_errors
def check_cmd(
    poem: Annotated[Optional[str], typer.Argument(help="The poem (default: --file, else stdin).",
                                                  show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Read poems from this UTF-8 file, separated by "
                                                 "blank lines.", show_default=False)] = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per poem.")] = False,
) -> None:
    """Check 格律: form, 平仄 under each line, template, violations, rhyme group, 孤平 and 三平尾.

    Exits 0 when every poem passes, 1 when one does not, 2 on bad input."""
    from . import prosody
    from .paths import resolve_data_dir

    if poem is not None and file is not None:
        raise fail("give the poem as an argument or --file, not both", 2)
    if poem is not None:
        text = poem
    elif file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise fail(f"--file {file}: no such file", 2) from None
        except UnicodeDecodeError:
            raise fail(f"--file {file} is not UTF-8 text: convert it to UTF-8", 2) from None
    else:
        if sys.stdin.isatty():
            raise fail("no poem given: pass it as an argument, with --file, or on stdin", 2)
        text = sys.stdin.read()
    from .corpus import is_han

    blocks = re.split(r"\n[ \t\u3000]*\n", text.replace("\r", ""))
    poems = [p for p in (prosody.normalize_poem(block) for block in blocks) if p]
    if not poems:
        raise fail("no poem given: the input is empty", 2)
    for i, p in enumerate(poems, 1):
        if not any(is_han(c) for c in p):
            hint = " (to read a file, use --file)" if poem is not None else ""
            raise fail(f"poem {i} has no Chinese characters: give the poem's text{hint}", 2)
    tones = prosody.load_tone_table(resolve_data_dir(data_dir))
    rhymes = prosody.load_rhymes("simplified")
    convert = _simplifier()
    results = [prosody.check_poem(convert(p), tones, rhymes) for p in poems]
    out = []
    for r in results:
        if as_json:
            out.append(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            out.append(_render_check(r))
    _write_stdout(("\n" if as_json else "\n\n").join(out) + "\n")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _simplifier():
    from .corpus import make_converter

    return make_converter("simplified")


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


def main() -> None:
    """Entry point of the `poetgen` console script."""
    app(prog_name="poetgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
