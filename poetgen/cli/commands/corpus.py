"""`poetgen corpus fetch|build|prepare|stats`: the prepared corpus training and `inspect` read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...vocab import MIN_COUNT, USER_MIN_COUNT
from ..app import corpus_app
from ..errors import handle_errors, write_stdout
from ..options import DataDirOpt, JsonOpt, QuietOpt, ScriptOpt, data_root, examples
from ..progress import StageProgress

FromOpt = Annotated[
    Optional[Path],
    typer.Option("--from", help="A local chinese-poetry-2.0.1.tgz or extracted package folder (offline); for "
                 "`build` and `prepare` also a file of your own poems: JSON lines ({\"title\", \"author\", "
                 "\"body\"} a line) or plain text (a blank line between poems, a first line in 《》 the title).",
                 show_default="download with npm pack", metavar="PATH"),
]
MinCountOpt = Annotated[Optional[int], typer.Option(
    "--min-count", help="Keep characters seen at least this often in train.",
    show_default=f"{MIN_COUNT}; {USER_MIN_COUNT} for a file of your own")]
WithSongOpt = Annotated[bool, typer.Option(
    "--with-song/--no-song", help="Also prepare the 全宋诗 of the same package (~250,000 poems, ~5x the Tang "
    "train split's tokens) as a training "
    "split of its own, `song` (see `train --train-split`); the Tang splits stay as they are.")]


@corpus_app.command("fetch", short_help="Download and verify the pinned package (cached).",
    epilog=examples("poetgen corpus fetch",
                                             "poetgen corpus fetch --from ~/Downloads/chinese-poetry-2.0.1.tgz"))
@handle_errors
def corpus_fetch(data_dir: DataDirOpt = None, source: FromOpt = None, quiet: QuietOpt = False) -> None:
    """Download chinese-poetry@2.0.1 with `npm pack`, verify its sha512 integrity, and cache it."""
    from ... import corpus

    root = data_root(data_dir)
    with StageProgress(quiet) as progress:
        path = corpus.fetch(root, source, progress=progress)
    if not quiet:
        typer.echo(f"corpus package ready: {path}", err=True)


def _build(data_dir, source, script: str, min_count: int | None, quiet: bool, fetch_first: bool,
           with_song: bool = False) -> None:
    from ... import corpus
    from ..render import build_report

    root = data_root(data_dir)
    with StageProgress(quiet) as progress:
        if fetch_first and not (source is not None and corpus.user.is_user_file(source)):  # nothing to fetch
            source = corpus.fetch(root, source, progress=progress)
        result = corpus.build(root, source, script=script, min_count=min_count, progress=progress,
                              with_song=with_song)
    if not quiet:
        typer.echo(build_report(result), err=True)


@corpus_app.command("build", short_help="Clean, split and tokenize the fetched package.",
    epilog=examples("poetgen corpus build", "poetgen corpus build --script traditional"))
@handle_errors
def corpus_build(data_dir: DataDirOpt = None, source: FromOpt = None, script: ScriptOpt = "simplified",
                 min_count: MinCountOpt = None, with_song: WithSongOpt = False, quiet: QuietOpt = False) -> None:
    """Clean, convert, split and tokenize the fetched package into the prepared corpus."""
    _build(data_dir, source, script, min_count, quiet, fetch_first=False, with_song=with_song)


@corpus_app.command("prepare", short_help="Fetch and build: run this before training.",
    epilog=examples("poetgen corpus prepare",
                                               "poetgen corpus prepare --with-song",
                                               "poetgen corpus prepare --data-dir /tmp/tang --script traditional"))
@handle_errors
def corpus_prepare(data_dir: DataDirOpt = None, source: FromOpt = None, script: ScriptOpt = "simplified",
                   min_count: MinCountOpt = None, with_song: WithSongOpt = False, quiet: QuietOpt = False) -> None:
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
    from ... import corpus
    from .. import render

    root = data_root(data_dir)
    meta = corpus.load_meta(root)
    write_stdout(render.corpus_stats_json(meta, top) if as_json else
                 render.corpus_stats(meta, top, root / corpus.GLYPHS_FILE))
