"""`poetgen eval`: a model's figures on a split of the prepared corpus or on a file of poems."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...config import check_eval_source
from ..app import app
from ..errors import handle_errors, write_stdout
from ..options import (
    DEFAULT_DEVICE,
    CheckpointOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    SplitOpt,
    ThreadsOpt,
    data_root,
    examples,
    flag,
)
from ..progress import StageProgress, alive
from ..render import to_json


@app.command("eval", short_help="Perplexity of a model on a split or a file of poems.",
    epilog=examples("poetgen eval --split val",
                                     "poetgen eval -c runs/tiny/best.pt --split test --json",
                                     "poetgen eval --file my-poems.txt   # one poem per line, or title<TAB>poem"))
@handle_errors
def eval_cmd(
    checkpoint_path: CheckpointOpt = None,
    split: SplitOpt = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="UTF-8 text, one poem per line (a body, or "
                                                 "title<TAB>body); or a file as `corpus build --from` takes it (JSON "
                                                 "lines, or poems of several lines with a blank line between).",
                                                 metavar="FILE", show_default="none")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = DEFAULT_DEVICE,
    int8: Annotated[bool, flag("--int8", "Measure the int8 path `poetgen sample` uses on a CPU instead of the "
                               "fp32 model.")] = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure nats/char, bits/char and perplexity, over whole records and over poem text alone."""
    check_eval_source(split, file)
    with alive("loading torch", quiet):  # seconds, before the evaluation's own progress
        from ... import evaluate
        from ...device import set_cpu_threads
    from ..render import eval_result, unknown_warning

    set_cpu_threads(threads)
    with StageProgress(quiet) as progress:
        result = evaluate.run(checkpoint_path, split=split, file=file,
                              data_dir=data_root(data_dir) if split else None, device=device, int8=int8,
                              progress=lambda done, total: progress(f"evaluating {split or file}", done, total))
    warning = unknown_warning(result)
    if warning:
        typer.echo(warning, err=True)
    write_stdout(to_json(result) + "\n" if as_json else eval_result(result))
