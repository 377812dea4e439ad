"""`poetgen inspect gradients|cells|gates`: what happens inside a model, as text and pictures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...text import plural
from ..app import inspect_app
from ..errors import fail, handle_errors, write_stdout
from ..options import (
    CheckpointOpt,
    DataDirOpt,
    JsonOpt,
    PngOpt,
    PoemsOpt,
    cell_option,
    checkpoint_option,
    data_root,
    examples,
    flag,
    output_option,
)
from ..progress import StageProgress, alive
from ..render import to_json


@inspect_app.command("gradients", short_help="How far back the loss reaches: ‖∂L_t/∂h_{t−k}‖ against k.",
    epilog=examples("poetgen inspect gradients --cell rnn --cell gru --cell lstm -o gradients.png",
                    "poetgen inspect gradients -c checkpoints/poetgen-default.pt -c runs/cells-rnn/best.pt --json"))
@handle_errors
def inspect_gradients(
    checkpoints: Annotated[Optional[list[Path]], checkpoint_option("A trained model (repeat for several).",
                                                                   show_default="none")] = None,
    cells: Annotated[Optional[list[str]], cell_option("A freshly initialized model of this cell (rnn, gru, lstm; "
                                                      "repeat for several).", show_default="none")] = None,
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
    with alive("loading torch"):  # seconds
        from ... import checkpoint, corpus, introspect
        from ...corpus import load_split
        from ...vocab import Vocab
    from ..render import gradient_table

    root = data_root(data_dir)
    corpus.load_meta(root)
    vocab = Vocab.load(root / "vocab.json")
    stream = load_split(root, "val")
    curves = {}
    with StageProgress(not sys.stderr.isatty()) as progress:
        models = [(str(c), checkpoint.load(c)) for c in checkpoints or []]
        for label, ck in models:
            ck.require_vocab(vocab, "pass --data-dir with the corpus it was trained on")
            progress(f"gradients of {label}", 0, 1)
            curves[_label(ck.config, Path(label))] = introspect.gradient_norms(ck.model, stream, max_k, samples, seed)
            progress(f"gradients of {label}", 1, 1)
        for cell in cells or []:
            model = introspect.fresh_model(len(vocab), cell, hidden_size, layers, seed)
            progress(f"gradients of a fresh {cell}", 0, 1)
            curves[f"{cell} {layers}x{hidden_size} (fresh)"] = introspect.gradient_norms(model, stream, max_k,
                                                                                        samples, seed)
            progress(f"gradients of a fresh {cell}", 1, 1)
    if output is not None:
        from ... import plot

        plot.gradient_curves(curves, output)
        typer.echo(f"wrote {output}", err=True)
    write_stdout(to_json({"max_k": max_k, "samples": samples, "curves": curves}) + "\n"
                 if as_json else gradient_table(curves, max_k))


def _label(config, path: Path) -> str:
    """A trained model's curve: its cell and size, and the file's folder and name."""
    where = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return f"{config.cell} {config.num_layers}x{config.hidden_size} ({where})"


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
    output: Annotated[Optional[Path], output_option("Also write the colouring as .png (needs poetgen[plot]) or "
                                                    ".html.", show_default="terminal only")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a poem with each character's background coloured by one unit's activation after reading it
    (in colour in a terminal, as numbers when piped or with NO_COLOR); --find ranks the units."""
    if output is not None and output.suffix.lower() not in (".png", ".html"):
        raise fail(f"--output {output}: give a .png or .html file name", 2)
    if poem is not None and not poem.strip():
        raise fail("--poem is empty: give the poem's text, or leave --poem out for the first val poem", 2)
    from .. import render

    with alive("loading the model"):  # importing torch alone takes seconds
        from ... import checkpoint, corpus, introspect

        ck = checkpoint.load(checkpoint_path or checkpoint.default_checkpoint())
    found = None
    if find or poem is None:
        records = corpus.val_records(data_root(data_dir), poems, ck.meta.script)
        if not records:
            raise fail(f"the val split in {data_root(data_dir)} holds no poem: rebuild it with `poetgen corpus "
                       "build`, or give --poem", 2)
        if poem is None:  # the first val poem the model can read whole (a val poem may hold a rare character)
            title, poem = next(((t, b) for t, b in records if not ck.vocab.unknown(t + b)), records[0])
    title, poem = introspect.as_read(ck.vocab, ck.meta.script, title, poem)
    if find:
        with StageProgress(not sys.stderr.isatty()) as progress:
            found = introspect.find_units(ck.model, ck.vocab, records,
                                          progress=lambda d, t: progress("tracing val poems", d, t))
    tr = introspect.trace(ck.model, introspect.record_ids(ck.vocab, title, poem), ck.vocab)
    if unit is None:
        unit = found["position in line"][0][0] if found and found["position in line"] else "0:hidden 0"
    chars, acts = introspect.body_activations(tr, unit)
    if as_json:
        write_stdout(to_json({"unit": unit, "chars": chars, "activations": [round(v, 4) for v in acts],
                                 "find": found}) + "\n")
    else:
        write_stdout((render.units_found(found) if found else "") + render.activations(unit, chars, acts))
    if output is not None:
        _write_activations(output, unit, chars, acts)


def _write_activations(output: Path, unit: str, chars: list[str], acts: list[float]) -> None:
    """The colouring of `inspect cells` as a .png picture or an .html page."""
    from .. import render

    if output.suffix.lower() == ".png":
        from ... import plot

        if plot.cjk_font() is None:
            typer.echo(f"warning: no font that draws Chinese characters ({plot.CJK_FONTS[0]} or another of "
                       f"{len(plot.CJK_FONTS)}): {output} shows each character's value instead; install one "
                       "(Debian: fonts-noto-cjk), or write .html", err=True)
        plot.activation_strip("".join(chars), acts, f"unit {unit}", output)
    else:
        from ...paths import atomic_write_text

        atomic_write_text(output, render.activations_html(unit, chars, acts))
    typer.echo(f"wrote {output}", err=True)


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
    from ...forms import detect
    from ..render import gate_table

    with alive("loading the model"):  # importing torch alone takes seconds
        from ... import checkpoint, corpus, introspect

        ck = checkpoint.load(checkpoint_path or checkpoint.default_checkpoint())
    if layer >= ck.config.num_layers:
        raise fail(f"--layer {layer}: the model has {plural(ck.config.num_layers, 'layer')} (0-based)", 2)
    records = [r for r in corpus.val_records(data_root(data_dir), 100_000, ck.meta.script)
               if (f := detect(r[1])) is not None and f.chars == chars][:poems]
    with StageProgress(not sys.stderr.isatty()) as progress:
        means = introspect.gate_means(ck.model, ck.vocab, records, chars, layer,
                                      progress=lambda d, t: progress("tracing val poems", d, t))
    labels = [str(i + 1) for i in range(chars)] + ["mark"]
    if output is not None:
        from ... import plot

        plot.gate_curves(means, labels, output)
        typer.echo(f"wrote {output}", err=True)
    write_stdout(to_json({"layer": layer, "chars": chars, "poems": len(records), "positions": labels,
                             "means": means}) + "\n"
                 if as_json else gate_table(means, labels, layer, chars, len(records)))
