"""`poetgen info`: a model's card."""

from __future__ import annotations

from ..app import app
from ..errors import handle_errors, write_stdout
from ..options import (
    CheckpointOpt,
    JsonOpt,
    examples,
)
from ..progress import alive
from ..render import to_json


@app.command("info", short_help="A model's card: shape, corpus, val and test figures.",
    epilog=examples("poetgen info", "poetgen info -c runs/tiny/best.pt --json"))
@handle_errors
def info_cmd(checkpoint_path: CheckpointOpt = None, as_json: JsonOpt = False) -> None:
    """Print a model's card: architecture, parameters, corpus, validation and test figures."""
    from ..render import model_card

    with alive("reading the model"):  # importing torch alone takes seconds
        from ... import checkpoint
        from ...card import describe

        card = describe(checkpoint.read(checkpoint_path or checkpoint.default_checkpoint()))
    write_stdout(to_json(card, indent=1) + "\n" if as_json else model_card(card))
