from __future__ import annotations

import re
import subprocess
import sys

from cli_helpers import runner

from poetgen import __version__
from poetgen.cli import app


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from poetgen.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['sample', '--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['sample', '--top-p', '7']); assert r.exit_code == 2, r.stderr; "
            "r = CliRunner().invoke(app, ['sample', '--form', 'x']); assert r.exit_code == 2, r.stderr; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_version_and_module_entry_point():
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"poetgen {__version__}"
    out = subprocess.run([sys.executable, "-m", "poetgen", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"poetgen {__version__}"


def test_every_command_has_short_help():
    """-h is --help for the app, for each group and for each command a group lists, and shows that
    command's own usage line; the commands found so are COMMANDS, the list the help tests below walk."""
    commands, paths = [], [[]]
    while paths:
        path = paths.pop(0)
        short = runner.invoke(app, [*path, "-h"], env={"COLUMNS": "200"})
        assert short.exit_code == 0, (path, short.output)
        assert short.stdout == runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).stdout, path
        usage = short.stdout.split()
        assert usage[0] == "Usage:" and usage[2:2 + len(path)] == path, (path, short.stdout[:200])
        if "Commands:" in short.stdout:  # a group: its listed commands are walked in turn
            listed = re.findall(r"^  (\S+)", short.stdout.split("Commands:")[1], flags=re.MULTILINE)
            assert listed, path
            paths.extend([*path, name] for name in listed)
        else:
            commands.append(path)
    assert sorted(commands) == sorted(COMMANDS)
    assert {name for name, *_ in commands} == {"train", "eval", "sample", "check", "info", "export", "corpus",
                                                 "plot", "inspect"}


def test_unknown_option_is_a_usage_error_without_traceback():
    result = runner.invoke(app, ["sample", "--no-such-option"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr + result.stdout


COMMANDS = [["train"], ["eval"], ["sample"], ["check"], ["info"], ["export"], ["corpus", "fetch"],
            ["corpus", "build"], ["corpus", "prepare"], ["corpus", "stats"], ["plot"], ["inspect", "gradients"],
            ["inspect", "cells"], ["inspect", "gates"]]


def test_every_command_help_teaches():
    """Each command's help ends with real examples, shows every option's default, and shows flags as flags."""
    for args in COMMANDS:
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, args
        text = result.stdout
        assert "Examples:" in text and f"poetgen {' '.join(args)}" in text.split("Examples:")[1], args
        assert "<bool>" not in text, args
        options: list[str] = []  # one entry per option, its wrapped help lines joined
        for line in text.split("Options:")[1].split("Examples:")[0].splitlines():
            if line.startswith("  -"):
                options.append(line)
            elif options and line.strip():
                options[-1] += " " + line.strip()
        options = [o for o in options if "--help" not in o]
        assert options, args
        for option in options:
            assert "[default:" in option or "[required]" in option, (args, option)


def test_top_level_help_says_what_each_command_is_for():
    text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "poetgen sample" in text and "corpus prepare" in text
    for name in ("train", "eval", "sample", "info", "export", "check", "corpus", "plot", "inspect"):
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert not line.rstrip().endswith("..."), line  # a whole sentence, not a cut one


def test_progress_without_a_terminal_prints_a_heartbeat_and_an_end(capsys, monkeypatch):
    from poetgen.cli.progress import StageProgress

    with StageProgress() as progress:  # NO_COLOR is set: plain lines on stderr; a quick stage: its end only
        for done in range(1, 101):
            progress("evaluating val", done, 100)
    assert capsys.readouterr().err.splitlines() == ["evaluating val: done (100/100)"]
    clock = iter([0.0, 1.0, 2.5, 3.0, 12.4, 12.6, 13.0])  # a slow stage: after 2 s, then every 10 s
    monkeypatch.setattr("poetgen.cli.progress.time.monotonic", lambda: next(clock))
    with StageProgress() as progress:
        for done in range(1, 8):
            progress("evaluating val", done, 7)
    assert capsys.readouterr().err.splitlines() == ["evaluating val: 3/7", "evaluating val: 6/7",
                                                     "evaluating val: done (7/7)"]
    with StageProgress(quiet=True) as progress:
        progress("evaluating val", 3, 3)
    assert capsys.readouterr().err == ""


def test_every_package_of_the_source_is_in_the_wheel():
    """pyproject.toml lists the packages a wheel holds: each folder of poetgen/ with an __init__.py."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "poetgen").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
