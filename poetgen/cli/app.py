"""The Typer objects: the `poetgen` app and its `corpus` and `inspect` groups. The commands register
themselves on them (cli/commands/)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from .errors import OneLineErrors

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=OneLineErrors,
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
inspect_app = typer.Typer(help="See inside a model: gradients through time, units that track the verse, gates.",
                          context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(corpus_app, name="corpus", short_help="Fetch and prepare the corpus: `corpus prepare` before training.")
app.add_typer(inspect_app, name="inspect", short_help="See inside a model: gradients, units, gates (pictures).")


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
