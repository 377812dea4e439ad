"""`poetgen export`: a shipped model made from a trained one, its val and test measured on the file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from ..errors import committed, handle_errors
from ..options import DataDirOpt, QuietOpt, checkpoint_option, data_root, examples, output_option
from ..progress import StageProgress, alive


@app.command("export", short_help="Turn a trained best.pt into a small model to ship.",
    epilog=examples("poetgen export -c runs/small/best.pt -o checkpoints/poetgen-default.pt",
                                       "poetgen export -c runs/tiny/best.pt -o tiny.pt --no-test --full"))
@handle_errors
def export_cmd(
    checkpoint_path: Annotated[Path, checkpoint_option("The trained model (a best.pt).")],
    output: Annotated[Path, output_option("Where to write the shipped model.")],
    data_dir: DataDirOpt = None,
    half: Annotated[bool, typer.Option("--half/--full", help="Store weights as fp16 (half the size).")] = True,
    test: Annotated[bool, typer.Option("--test/--no-test", help="Evaluate val and test as shipped and record "
                                       "them in the file.")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Make a shipped model: weights only (fp16 by default) with the corpus's tone and 叠字 tables
    inside, and the val/test figures measured on the file as written."""
    with alive("loading torch", quiet):
        from ... import corpus, evaluate
        from ...card import export
    from ..render import figures

    root = data_root(data_dir)
    with alive("reading the corpus's tables", quiet):
        tones = corpus.corpus_tones(root)
        doubles = corpus.corpus_doubles(root)

    def measure(path: Path) -> dict:
        measured = {}
        with StageProgress(quiet) as progress:
            for split in ("val", "test"):
                r = evaluate.run(path, split=split, data_dir=root,
                                 progress=lambda d, t, s=split: progress(f"evaluating {s}", d, t))
                measured[split] = {k: r[k] for k in ("record", "body", "chars", "body_chars", "unknown")}
                if not quiet:
                    typer.echo(f"{split}: {figures(r)}", err=True)
        return measured

    written = export(checkpoint_path, output, tones=tones, half=half, measure=measure if test else None,
                     doubles=doubles)
    committed()  # the new file is in place: the export has succeeded, whatever comes now
    if not quiet:
        typer.echo(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)", err=True)
