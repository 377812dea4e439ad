"""`poetgen sample`: write poems, streamed to a terminal or written in batches (text, json, jsonl)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...config import SAMPLE_DEVICE, SCORES, SampleOptions
from ...errors import UsageError
from ...text import plural
from ..app import app
from ..errors import emit, handle_errors, write_stdout
from ..options import (
    CheckpointOpt,
    DeviceOpt,
    FormatOpt,
    FormOpt,
    TemplateOpt,
    ThreadsOpt,
    examples,
    flag,
    one_of,
    output_option,
)
from ..progress import StageProgress, alive


@app.command("sample", short_help="Write poems (start here: the shipped model needs nothing else).",
    epilog=examples(
    "poetgen sample --prompt 春 --form qijue --seed 1",
    "poetgen sample --form 五律 --acrostic 春夏秋冬东南西北",
    "poetgen sample --form wujue --strict --rhyme 东 | poetgen check"))
@handle_errors
def sample_cmd(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The poem's beginning, kept verbatim.",
                                        show_default="none")] = "",
    title: Annotated[Optional[str], typer.Option("--title", "-t", help="A title to condition on.",
                                                 show_default="the model writes one (shown as the first line)")
                     ] = None,
    form: FormOpt = "free",
    acrostic: Annotated[str, typer.Option("--acrostic", "-a", help="藏头诗: these characters start the lines.",
                                          show_default="none")] = "",
    num: Annotated[int, typer.Option("--num", "-n", help="How many poems (sampled together as one batch).")] = (
        SampleOptions.num),
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Sampling temperature; 0 is greedy.")
                           ] = SampleOptions.temperature,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k likeliest characters only.",
                                                 show_default="all")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the smallest set reaching "
                                                   "this probability, in (0, 1].", show_default="1")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed: the same seed and options give "
                                                "the same poems.", show_default="random")] = None,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Longest body in free form.")] = (
        SampleOptions.max_chars),
    strict: Annotated[bool, flag("--strict", "Enforce 格律 with --form: 平仄 template, one 平水韵 rhyme group, "
                                 "no repeated rhyme, no 孤平 or 三平尾.")] = False,
    template: TemplateOpt = None,
    rhyme: Annotated[Optional[str], typer.Option("--rhyme", help="Fixed forms: rhyme in the 平水韵 group of this "
                                                 "character (e.g. 东).", show_default="any group")] = None,
    no_rhyme: Annotated[bool, flag("--no-rhyme", "Fixed forms without rhyme or the 重字 rule (the plain model).")
                        ] = False,
    best_of: Annotated[int, typer.Option("--best-of", "-N", help="Draw N candidates per poem in one batch and keep "
                                         "the best by --score; 1 is plain sampling.")] = SampleOptions.best_of,
    score: Annotated[str, typer.Option("--score", help="What best-of-N ranks by in a fixed form: critic (the mean "
                                       "log-probability per character plus the model's critic, which learned to tell "
                                       "poets' poems from the model's own) or logprob (the likeliest).",
                                       **one_of("score", SCORES))] = SampleOptions.score,
    no_prune: Annotated[bool, flag("--no-prune", "Write every best-of-N candidate to the end. Without it, in a fixed "
                                   "form at best of 4 or more the weaker candidates stop early: at a quarter, half "
                                   "and three quarters of the lines only the best 3/4, 1/2 and 3/8 (by --score so "
                                   "far) go on, a third less work at best of 8.")] = False,
    fp32: Annotated[bool, flag("--fp32", "Sample through the full-precision weights. Without it an LSTM on an x86 "
                               "CPU samples through int8 weights, 1.1 to 1.9 times faster for the 2x1024 and "
                               "within 0.2% in perplexity (`poetgen eval --int8`); either way the same seed gives "
                               "the same poems on the same machine, and in int8 poem i is the same whatever "
                               "--num.")] = False,
    device: DeviceOpt = SAMPLE_DEVICE,
    threads: ThreadsOpt = None,
    checkpoint_path: CheckpointOpt = None,
    fmt: FormatOpt = "text",
    output: Annotated[Optional[Path], output_option("Write to this file (atomically) instead of stdout.",
                                                    show_default="stdout")] = None,
) -> None:
    """Write poems. Poems go to stdout, one line per verse line, a blank line between poems; the title
    (the model's, or the one given) comes first, in 《》."""
    from ...config import sample_request

    request = sample_request(prompt=prompt, title=title, form=form, acrostic=acrostic, num=num,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_chars=max_chars,
                             best_of=best_of, strict=strict, template=template, rhyme=rhyme, no_rhyme=no_rhyme,
                             score=score, prune=not no_prune)
    if output is not None and checkpoint_path is not None:
        from ...paths import same_file

        if same_file(output, checkpoint_path):
            raise UsageError(f"--output {output} is the checkpoint: choose another path")
    with alive("loading the model"):  # importing torch alone takes seconds
        from ... import checkpoint
        from ...device import pick_device, set_cpu_threads
        from ...sample import prepare

        set_cpu_threads(threads)
        where = pick_device(device)
        path = checkpoint_path or checkpoint.default_checkpoint()
        generator, opts, rules = prepare(checkpoint.load(path, where), request, int8=not fp32)
    candidates = opts.candidates_per_poem
    if output is None and fmt == "text" and num == 1 and candidates == 1 and sys.stdout.isatty():
        _stream(generator, opts, rules)
        _say_seed(seed, opts)
        return

    def render(batch, start: int) -> str:
        from ...sample import poem_record
        from ..render import poem_records, poems_text

        if fmt == "text":
            return poems_text(batch, start)
        strict = request.verse.strict
        return poem_records([poem_record(p, start + i, opts, strict, path) for i, p in enumerate(batch)], fmt)

    _write_batches(lambda tick: generator.iter_generate(opts, verse=rules, on_progress=tick), render, fmt, output,
                   path, f"drawing {plural(candidates, 'candidate')} per poem", num, show=candidates * num > 64)
    _say_seed(seed, opts)


def _say_seed(given: int | None, opts) -> None:
    """A drawn seed, once the poems are out (stderr): with it the poems can be made again."""
    if given is None:
        typer.echo(f"seed {opts.seed} (--seed {opts.seed} makes these poems again)", err=True)


def _stream(generator, opts, rules) -> None:
    """One poem, written to the terminal character by character as it is drawn."""
    from ...text import LINE_END

    def on_title(row: int, text: str) -> None:
        if text:
            write_stdout(f"《{text}》\n")

    def on_char(row: int, ch: str) -> None:
        write_stdout(ch + ("\n" if ch in LINE_END else ""))

    if opts.title:  # a given title is not drawn: say it first
        on_title(0, opts.title)
    poems = generator.generate(opts, on_char=on_char, on_title=on_title, verse=rules)
    write_stdout("\n" if poems[0].body and poems[0].body[-1] not in LINE_END else "")


def _write_batches(batches, render, fmt: str, output: Path | None, checkpoint_path: Path, stage: str, num: int,
                   show: bool) -> None:
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
        emit("".join(parts), output, (checkpoint_path,))

