"""`poetgen check`: the 格律 of poems; exit 1 when one fails. Never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import PoetgenError, UsageError
from ..app import app
from ..errors import fail, handle_errors, write_stdout
from ..options import CheckpointOpt, data_dir_option, examples, json_option
from ..render import to_json


@app.command("check", short_help="Check the 格律 of poems (exit 1 when one fails).",
    epilog=examples("poetgen check 秋色无限春，春风于何人。故乡千万里，可见未相亲。",
                                      "poetgen check --file poems.txt --json",
                                      "poetgen sample --form qilv --strict | poetgen check"))
@handle_errors
def check_cmd(
    poem: Annotated[Optional[str], typer.Argument(help="The poem (- reads stdin); several arguments are its "
                                                  "lines, as if separated by spaces.",
                                                  show_default="--file, else stdin")
                    ] = None,
    extra: Annotated[Optional[list[str]], typer.Argument(hidden=True)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Read poems from this UTF-8 file, separated by "
                                                 "blank lines.", metavar="FILE", show_default="stdin")] = None,
    checkpoint_path: CheckpointOpt = None,
    data_dir: Annotated[Optional[Path], data_dir_option("Take the tone table of this prepared corpus instead of "
                                                        "the model's.", show_default="the model's")] = None,
    as_json: Annotated[bool, json_option("One JSON object per poem.")] = False,
) -> None:
    """Check 格律: form, 平仄 under each line, template, violations, rhyme group, 孤平 and 三平尾.

    Exits 0 when every poem passes, 1 when one does not, 2 on bad input."""
    from ... import prosody
    from ...checking import Checker
    from ...text import iter_lines
    from ..render import check_result

    if extra:  # `poetgen check 床前明月光 疑是地上霜 …`: the shell split the lines at the spaces
        if poem == "-":
            raise fail("- reads the poem from stdin: give no other argument", 2)
        poem = " ".join([poem, *extra])
    if poem == "-" and file is None:  # the usual name of stdin
        poem, file = None, Path("-")
    if poem is not None and file is not None:
        raise fail("give the poem as an argument or --file, not both", 2)
    try:
        checker = Checker(checkpoint_path, data_dir)
    except PoetgenError as e:  # a model or corpus that cannot be read is bad input (2), not a failing poem (1)
        raise fail(str(e), 2) from None
    ok, reader_gone, count = True, False, 0
    lines = poem.splitlines() if poem is not None else iter_lines(file)
    first: list[str] = []  # the input's first line that holds anything (what an input of no poem held)

    def watched(lines):
        for line in lines:
            if not first and line.strip():
                first.append(line.strip())
            yield line

    for count, text in enumerate(prosody.read_poems(watched(lines)), 1):
        try:
            r = checker.check(text)
        except UsageError:
            hint = " (to read a file, use --file)" if poem is not None else ""
            raise fail(f"poem {count} has no Chinese characters: give the poem's text{hint}", 2) from None
        ok = ok and r.ok
        if not reader_gone:
            out = to_json(r.to_dict()) + "\n" if as_json else \
                ("\n" if count > 1 else "") + check_result(r) + "\n"
            reader_gone = not write_stdout(out)  # keep checking: the exit code is the verdict
    if count == 0 and first:
        shown = first[0] if len(first[0]) <= 20 else first[0][:20] + "…"
        raise fail(f"no poem given: the input holds only {shown} (a title, or no verse line): give the poem's "
                   "lines after its title", 2)
    if count == 0:
        raise fail("no poem given: the input is empty", 2)
    if not ok:
        raise typer.Exit(1)
