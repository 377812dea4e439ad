"""Progress on stderr: a live bar in a terminal, plain lines otherwise (NO_COLOR, a pipe, a log file).
StageProgress is fed by the library's progress(stage, done, total) calls, TrainProgress by the
trainer's events."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import typer

from ..events import Note, RunStarted, Tick, TrainEvent, TrainLog, Validated, Validating
from ..text import plural
from .render import console, fmt, plain_output

SHARES = 1000  # a time budget's bar: thousandths of the way to its end


def tokens(rate: float | None) -> str:
    """A throughput, or - before there is one (validations before the first log line)."""
    return f"{rate:,.0f}" if rate else "-"


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal. A live bar on stderr takes what is written to stdout and prints it
    above itself (rich's redirect_stdout): right when both are the terminal, but it would send poems
    meant for a pipe or a file (`> poems.txt`) to the terminal instead."""
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (OSError, ValueError):  # closed
        return False


@contextmanager
def alive(message: str, quiet: bool = False):
    """A spinner and `message` on stderr while the block runs (a few seconds: torch loading), in a
    terminal; gone when it ends. Where output is plain (a pipe, a log, NO_COLOR, TERM=dumb: no cursor
    movement) or quiet, nothing is shown, as StageProgress shows no bar there."""
    if quiet or plain_output():
        yield
        return
    from rich.live import Live
    from rich.spinner import Spinner

    with Live(Spinner("dots", message), console=console(), transient=True, refresh_per_second=12.5,
              redirect_stdout=stdout_is_terminal()):
        yield


class StageProgress:
    """Progress on stderr fed by the library's progress(stage, done, total) calls: a live bar in a
    terminal, a line per finished stage otherwise."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.said: dict[str, float] = {}  # plain output: when each stage last printed a line (or began)
        self.plain = False

    def __enter__(self):
        self.plain = not self.quiet and plain_output()
        if not self.quiet and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console(), transient=False,
                                     redirect_stdout=stdout_is_terminal())
            self.progress.__enter__()
        return self

    # without a terminal: a stage that runs 2 s says how far it is, then once per 10 s, and every
    # stage says when it is done (a quick failure stays one line)
    PLAIN_FIRST_S, PLAIN_EVERY_S = 2.0, 10.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.plain:
            now = time.monotonic()
            if stage not in self.said:
                self.said[stage] = now - self.PLAIN_EVERY_S + self.PLAIN_FIRST_S  # the first line after 2 s
            if done == total:
                typer.echo(f"{stage}: done ({total}/{total})", err=True)
            elif now - self.said[stage] >= self.PLAIN_EVERY_S:
                typer.echo(f"{stage}: {int(done)}/{total}", err=True)  # (done may be a float: a share of one)
                self.said[stage] = now
        if self.progress is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


class TrainProgress:
    """The progress of `poetgen train` on stderr, fed by the trainer's typed events (poetgen.events): a
    live bar in a terminal, a line per validation otherwise. It reads nothing but the events."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.val_ppl = None
        self.plain = False
        self.seconds = None  # a time budget: the bar runs to whichever end comes first, steps or seconds
        self.steps = None

    def __enter__(self):
        self.plain = not self.quiet and plain_output()
        return self

    def _live(self) -> None:
        """The live bar, from the run's start (a spinner may run while the run loads: one live display
        at a time)."""
        if self.quiet or self.plain or self.progress is not None:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.fields[where]}"),
            TextColumn("loss {task.fields[loss]}  val ppl {task.fields[ppl]}  {task.fields[tps]} tok/s "
                       "{task.fields[note]}"),
            TimeRemainingColumn(), console=console(), refresh_per_second=4, redirect_stdout=stdout_is_terminal(),
        )
        self.progress.__enter__()

    def __call__(self, e: TrainEvent) -> None:
        if isinstance(e, RunStarted):
            self._started(e)
        elif isinstance(e, Note):
            if not self.quiet:
                typer.echo(e.message, err=True)
        elif isinstance(e, Validating):
            if self.task is not None:
                self.progress.update(self.task, note="(validating)")
        elif isinstance(e, Validated):
            self.val_ppl = e.val_ppl
            if self.plain:
                typer.echo(f"step {e.step} epoch {e.epoch}: train loss {fmt(e.train_loss, 3)}, val loss "
                           f"{fmt(e.val_loss, 4)}, val ppl {fmt(e.val_ppl)} (body {fmt(e.val_body_ppl)}), "
                           f"{tokens(e.tokens_per_s)} tok/s, {e.elapsed_s:.0f} s", err=True)
            self._bar(e.step, e.epoch, e.train_loss, e.tokens_per_s, e.elapsed_s)
        elif isinstance(e, (TrainLog, Tick)):
            self._bar(e.step, e.epoch, e.train_loss, e.tokens_per_s, e.elapsed_s, e.total_steps)

    def _started(self, e: RunStarted) -> None:
        self.val_ppl = e.val_ppl
        self._live()
        if not self.quiet:
            budget = [f"{e.stop_steps:,} steps" if e.stop_steps else None,
                      f"{e.max_minutes:g} min" if e.max_minutes else None]
            typer.echo(f"{'resuming' if e.step else 'training'} {e.num_layers}x{e.hidden_size} {e.cell} on "
                       f"{e.device} from step {e.step:,}; budget {' or '.join(b for b in budget if b)}; "
                       f"validation every {plural(e.eval_every, 'step')}"
                       + (f"; sampled softmax, {e.sampled_softmax:,} negatives (train loss over the sampled "
                          "columns)" if e.sampled_softmax else ""), err=True)
        if self.progress is not None:
            self.seconds, self.steps = (60 * e.max_minutes if e.max_minutes else None), e.stop_steps
            total = SHARES if self.seconds else e.total_steps
            self.task = self.progress.add_task("train", total=total, completed=0 if self.seconds else e.step,
                                               epoch=e.epoch, where=f"step {e.step:,}", loss="-",
                                               ppl=fmt(e.val_ppl), tps="-", note="")

    def _bar(self, step: int, epoch: int, train_loss: float | None, tokens_per_s: float | None,
             elapsed_s: float, total_steps: int | None = None) -> None:
        """The bar runs over the steps of the budget; with a time budget, to whichever end comes first,
        the steps or the seconds (the steps a time buys are not known ahead: its end is)."""
        if self.task is None:
            return
        fields = {"epoch": epoch, "ppl": fmt(self.val_ppl), "note": ""}
        if train_loss is not None:
            fields["loss"] = fmt(train_loss, 3)
        if tokens_per_s:
            fields["tps"] = f"{tokens_per_s:,.0f}"
        if self.seconds:
            done = max(elapsed_s / self.seconds, step / self.steps if self.steps else 0.0)
            fields["where"] = (f"step {step:,}" + (f"/{self.steps:,}" if self.steps else "")
                               + f", {min(elapsed_s, self.seconds):.0f}/{self.seconds:.0f} s")
            self.progress.update(self.task, completed=SHARES * min(1.0, done), **fields)
            return
        total = total_steps or self.progress.tasks[0].total
        fields["where"] = f"step {step:,}/{total:,.0f}" if total else f"step {step:,}"
        self.progress.update(self.task, completed=step, **({"total": total_steps} if total_steps else {}),
                             **fields)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False
