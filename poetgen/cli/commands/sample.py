"""`poetgen sample`: write poems, streamed to a terminal or written in batches (text, json, jsonl)."""

from __future__ import annotations

import inspect
import sys
from functools import partial
from pathlib import Path

import typer

from ...checkpoint import default_checkpoint
from ...errors import UsageError
from ...paths import same_file
from ...sample.request import SAMPLE_DEVICE, SampleOptions, sample_request
from ...text import plural
from ..app import app
from ..errors import emit, handle_errors, write_stdout
from ..options import (
    AcrosticOpt,
    AuthorOpt,
    BestOfOpt,
    CheckpointOpt,
    DeviceOpt,
    FormatOpt,
    FormOpt,
    Fp32Opt,
    KeywordsOpt,
    MaxCharsOpt,
    NoPlanOpt,
    NoPruneOpt,
    NoRhymeOpt,
    NumOpt,
    PromptOpt,
    RhymeOpt,
    SampleOutputOpt,
    ScoreOpt,
    SearchOpt,
    SeedOpt,
    ShowPlanOpt,
    StrictOpt,
    TemperatureOpt,
    TemplateOpt,
    ThreadsOpt,
    TitleOpt,
    TopKOpt,
    TopPOpt,
    examples,
)
from ..progress import StageProgress, alive
from ..render import render_poems

REQUEST_WORDS = frozenset(inspect.signature(sample_request).parameters)  # the options sample_request takes


@app.command("sample", short_help="Write poems (start here: the shipped model needs nothing else).",
    epilog=examples(
    "poetgen sample --prompt 春 --form qijue --seed 1",
    "poetgen sample --form 五律 --acrostic 春夏秋冬东南西北",
    "poetgen sample --form wujue --strict --rhyme 东 | poetgen check"))
@handle_errors
def sample_cmd(
    ctx: typer.Context,
    prompt: PromptOpt = "",
    title: TitleOpt = None,
    form: FormOpt = "free",
    acrostic: AcrosticOpt = "",
    num: NumOpt = SampleOptions.num,
    temperature: TemperatureOpt = SampleOptions.temperature,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    max_chars: MaxCharsOpt = SampleOptions.max_chars,
    strict: StrictOpt = False,
    template: TemplateOpt = None,
    rhyme: RhymeOpt = None,
    no_rhyme: NoRhymeOpt = False,
    best_of: BestOfOpt = SampleOptions.best_of,
    score: ScoreOpt = SampleOptions.score,
    search: SearchOpt = SampleOptions.search,
    no_prune: NoPruneOpt = False,
    fp32: Fp32Opt = False,
    device: DeviceOpt = SAMPLE_DEVICE,
    threads: ThreadsOpt = None,
    checkpoint_path: CheckpointOpt = None,
    fmt: FormatOpt = "text",
    output: SampleOutputOpt = None,
    author: AuthorOpt = None,
    keywords: KeywordsOpt = None,
    no_plan: NoPlanOpt = False,
    show_plan: ShowPlanOpt = False,
) -> None:
    """Write poems. Poems go to stdout, one line per verse line, a blank line between poems; the title
    (the model's, or the one given) comes first, in 《》."""
    words = {k: v for k, v in ctx.params.items() if k in REQUEST_WORDS}
    request = sample_request(**words, prune=not no_prune, plan=not no_plan)
    if output is not None and str(output) == "-":  # the usual name of stdout
        output = None
    path = checkpoint_path or default_checkpoint()  # read without torch
    if output is not None and same_file(output, path):
        raise UsageError(f"--output {output} is the checkpoint: choose another path")
    with alive("loading the model"):  # importing torch alone takes seconds
        from ... import checkpoint
        from ...device import pick_device, set_cpu_threads
        from ...sample import Sampler

        set_cpu_threads(threads)
        sampler = Sampler(checkpoint.load(path, pick_device(device)), request, int8=not fp32)
    candidates = sampler.options.candidates_per_poem
    if output is None and fmt == "text" and num == 1 and candidates == 1 and not show_plan and sys.stdout.isatty():
        _stream(sampler)
    else:
        _write_batches(sampler.stream, partial(render_poems, sampler, fmt, show_plan), fmt, output,
                       f"drawing {plural(candidates, 'candidate')} per poem", num, show=candidates * num > 64)
    if seed is None:  # a drawn seed, once the poems are out: with it the poems can be made again
        typer.echo(f"seed {sampler.options.seed} (--seed {sampler.options.seed} makes these poems again)", err=True)


def _stream(sampler) -> None:
    """One poem, written to the terminal character by character as it is drawn."""
    from ...text import LINE_END

    def on_title(row: int, text: str) -> None:
        if text:
            write_stdout(f"《{text}》\n")

    def on_char(row: int, ch: str) -> None:
        write_stdout(ch + ("\n" if ch in LINE_END else ""))

    if sampler.options.title:  # a given title is not drawn: say it first
        on_title(0, sampler.options.title)
    poems = sampler.poems(on_char=on_char, on_title=on_title)
    write_stdout("\n" if poems[0].body and poems[0].body[-1] not in LINE_END else "")


def _write_batches(batches, render, fmt: str, output: Path | None, stage: str, num: int, show: bool) -> None:
    """Write each batch of `batches(tick)` as it comes (stdout, text or jsonl), or all at the end (json,
    or --output); `tick(poems)` moves the progress bar while a batch is drawn."""
    parts, done = [], 0
    with StageProgress(quiet=not (sys.stderr.isatty() and show)) as progress:
        progress(stage, 0, num)  # the bar and its clock from the start, not after the first batch
        for batch in batches(lambda poems: progress(stage, min(poems, num - 0.001), num)):  # done: batch by batch
            text = render(batch, done)
            done += len(batch)
            progress(stage, done, num)
            if output is None and fmt != "json":
                if not write_stdout(text):
                    return
            else:
                parts.append(text)
    if fmt == "json":
        parts = ["[\n" + ",\n".join(p for p in parts if p) + "\n]\n"]
    if parts:
        emit("".join(parts), output)

