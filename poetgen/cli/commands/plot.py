"""`poetgen plot`: training curves of runs, as text and as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..errors import handle_errors, write_stdout
from ..options import PngOpt, examples


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
    from ... import plot

    loaded = [plot.read_run(r) for r in runs]
    if output is not None:
        plot.training_curves(loaded, output)
    write_stdout(plot.runs_text(loaded) + "\n")
    if output is not None:
        typer.echo(f"wrote {output}", err=True)
