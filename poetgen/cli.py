"""The poetgen command line: thin Typer commands over the library.

Heavy modules (torch, numpy, opencc) are imported inside the commands, so `poetgen --help`
stays fast."""

from __future__ import annotations

import functools
import json
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
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=stderr_console(), transient=False,
            )
            self.progress.__enter__()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
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
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
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
    from . import corpus

    root = _data_dir(data_dir)
    with StageProgress(quiet) as progress:
        path = corpus.fetch(root, source, progress=progress)
        result = corpus.build(root, path, script=script, min_count=min_count, progress=progress)
    _report_build(result, quiet)


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


def main() -> None:
    """Entry point of the `poetgen` console script."""
    app(prog_name="poetgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
