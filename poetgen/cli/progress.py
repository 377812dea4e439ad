"""Progress on stderr: a live bar in a terminal, plain lines otherwise (NO_COLOR, a pipe, a log file).
StageProgress is fed by the library's progress(stage, done, total) calls, TrainProgress by the
trainer's events."""

from __future__ import annotations

import time

import typer

from ..text import plural
from .render import console, fmt, plain_output


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
                                     TimeElapsedColumn(), console=console(), transient=False)
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
                typer.echo(f"{stage}: done ({done}/{total})", err=True)
            elif now - self.said[stage] >= self.PLAIN_EVERY_S:
                typer.echo(f"{stage}: {done}/{total}", err=True)
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
    """The progress of `poetgen train` on stderr: a live bar in a terminal, a line per evaluation otherwise."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.val_ppl = None
        self.plain = False
        self.trainer = None

    def __enter__(self):
        self.plain = not self.quiet and plain_output()
        if not self.quiet and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val ppl {task.fields[ppl]}  {task.fields[tps]} tok/s "
                           "{task.fields[note]}"),
                TimeRemainingColumn(), console=console(), refresh_per_second=4,
            )
            self.progress.__enter__()
        return self

    def start(self, trainer) -> None:
        c = trainer.cfg
        if not self.quiet:
            budget = [f"{trainer.total_steps:,} steps" if trainer.stop_steps else None,
                      f"{c.max_minutes:g} min" if c.max_minutes else None]
            what = "resuming" if trainer.step else "training"
            typer.echo(f"{what} {trainer.model_config.num_layers}x{trainer.model_config.hidden_size} "
                       f"{trainer.model_config.cell} on {trainer.device} from step {trainer.step:,}; budget "
                       f"{' or '.join(b for b in budget if b)}; validation every {plural(c.eval_every, 'step')}"
                       + (f"; sampled softmax, {c.sampled_softmax:,} negatives (train loss over the sampled "
                          "columns)" if c.sampled_softmax else ""), err=True)
        if self.progress is not None:
            ppl = trainer.last_val["record"]["perplexity"] if trainer.last_val and "record" in trainer.last_val \
                else None
            self.task = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.step,
                                               epoch=trainer.epoch, loss="-", ppl=fmt(ppl), tps="-", note="")

    def event(self, e: dict) -> None:
        if e["event"] == "start":
            self.start(self.trainer)
            return
        if e["event"] == "note":
            if not self.quiet:
                typer.echo(e["message"], err=True)
            return
        if self.plain and e["event"] == "eval":
            typer.echo(f"step {e['step']} epoch {e['epoch']}: train loss {fmt(e['train_loss'], 3)}, val loss "
                       f"{e['val_loss']:.4f}, val ppl {e['val_ppl']:.2f} (body {e['val_body_ppl']:.2f}), "
                       f"{e['tokens_per_s']:,.0f} tok/s, {e['elapsed_s']:.0f} s", err=True)
        if self.progress is None or self.task is None:
            return
        if e["event"] == "evaluating":
            self.progress.update(self.task, note="(validating)")
            return
        if e["event"] == "eval":
            self.val_ppl = e["val_ppl"]
        fields = {"epoch": e.get("epoch", 0), "ppl": fmt(self.val_ppl), "note": ""}
        if e.get("train_loss") is not None:
            fields["loss"] = fmt(e["train_loss"], 3)
        if e.get("tokens_per_s"):
            fields["tps"] = f"{e['tokens_per_s']:,.0f}"
        total = e.get("total_steps")
        self.progress.update(self.task, completed=e["step"], **({"total": total} if total else {}), **fields)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False
