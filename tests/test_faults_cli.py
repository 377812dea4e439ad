"""Faults common to every command: what cannot work refused at once, arguments that are not UTF-8,
a C locale, colours and tables in pipes, help, version and completion into places that cannot take them,
JSON without NaN, a damaged training log read by `plot`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_helpers import POETGEN, cli, one_line_error, shell

from poetgen import checkpoint


@pytest.mark.parametrize("args, needle", [
    (["train", "--hidden-size", "1000000", "--max-steps", "1"], "parameters"),
    (["train", "--bptt", "100000000", "--max-steps", "1"], "--bptt"),
    (["sample", "--prompt", "春" * 5000], "--prompt"),
    (["inspect", "cells", "--poem", ""], "--poem"),
    (["corpus", "build", "--min-count", "0"], "--min-count"),
    (["check", "-c", "/nonexistent.pt", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"], "no checkpoint"),
    (["check", "--data-dir", "/nonexistent", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"], "tone table"),
])
def test_what_cannot_work_is_refused_at_once(args, needle, tmp_path, prepared):
    train = ["--out", str(tmp_path / "r"), "--data-dir", str(prepared)] if args[0] == "train" else []
    result = cli(*args, *train)
    assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["check", "白日依山尽\udcff"], ["sample", "--prompt", "\udcff"]])
def test_arguments_that_are_not_utf8_are_refused_in_one_line(args):
    raw = [os.fsencode(a) for a in args]
    result = subprocess.run([sys.executable, "-m", "poetgen", *raw], capture_output=True, timeout=60)
    assert result.returncode == 2 and one_line_error(result) and b"not UTF-8" in result.stderr


def test_a_c_locale_still_reads_and_writes_chinese(tiny_checkpoint):
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "poetgen", "check", "-c", str(tiny_checkpoint), "白日依山尽",
                             "黄河入海流", "欲穷千里目", "更上一层楼"], capture_output=True, timeout=60, env=env)
    # the tiny model's tone table knows none of these characters but 一 (at a free place), unknown tones are no
    # violation, and 流 and 楼 rhyme in 十一尤: the poem passes, exit 0
    assert result.returncode == 0 and "五绝" in result.stdout.decode("utf-8") and result.stderr == b""
    ascii_out = subprocess.run([sys.executable, "-m", "poetgen", "check", "-c", str(tiny_checkpoint), "白日依山尽"],
                               capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert b"closed" not in ascii_out.stderr and "白日依山尽" in ascii_out.stdout.decode("utf-8")


def test_no_color_means_no_escape_codes(tiny_checkpoint, prepared):
    for args in (["info", "-c", str(tiny_checkpoint)], ["corpus", "stats", "--data-dir", str(prepared)]):
        result = cli(*args)  # NO_COLOR=1 (conftest)
        assert result.exit_code == 0 and "\x1b" not in result.stdout + result.stderr, args


def test_no_color_set_but_empty_keeps_colour(monkeypatch):
    from poetgen.cli.render import no_color

    monkeypatch.setenv("NO_COLOR", "")
    assert not no_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert no_color()


def test_piped_tables_have_no_box_characters(prepared):
    result = cli("corpus", "stats", "--data-dir", str(prepared))
    assert result.exit_code == 0, result.stderr
    assert "poems" in result.stdout and not set(result.stdout) & set("│┃━─┏┗┡┩")


def test_form_names_complete():
    from poetgen.cli.options import complete_form

    assert complete_form("q") == ["qijue", "qilv"] and "七律" in complete_form("七")


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("command", ["--version", "--help", "check --help"])
def test_help_and_version_into_a_closed_or_full_stdout(command, redirect):
    result = shell(f"{POETGEN} {command} {redirect}")
    assert result.returncode == 1 and one_line_error(result)


def test_install_completion_into_a_home_that_cannot_be_written_is_one_line():
    # the shell named, not detected from the parent processes (detection fails where no shell is a parent)
    result = shell(f"HOME=/proc _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 {POETGEN} --install-completion bash")
    assert result.returncode == 1 and one_line_error(result) and b"cannot write" in result.stderr


def test_json_output_never_holds_nan(tmp_path, tiny_model, tiny_vocab):
    from poetgen.checkpoint import ModelMeta

    nan = {"record": {"nats_per_char": float("nan"), "bits_per_char": float("nan"), "perplexity": float("inf")}}
    checkpoint.save(tmp_path / "m.pt", tiny_model, tiny_vocab, ModelMeta(script="traditional", val=nan))
    result = cli("info", "-c", str(tmp_path / "m.pt"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["val"]["record"]["perplexity"] is None  # strict JSON: null, not NaN


def test_plot_reads_a_run_with_gaps_and_damaged_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"event": "eval", "step": 1, "elapsed_s": 1.0, "val_bpc": 9.0, "train_loss": 6.0},
             {"event": "eval", "step": 2, "elapsed_s": 2.0, "val_bpc": None, "train_loss": None},
             {"event": "eval", "step": "x"}, {"event": "eval"}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    result = cli("plot", str(run))
    assert result.exit_code == 0, result.stderr
    assert "9.000" in result.stdout and "Traceback" not in result.stderr


def test_more_threads_than_cores_are_refused_before_anything_loads(prepared, tmp_path):
    """--threads beyond the cores this process may use only makes threads wait on each other (1,000
    hung a training): one line, exit 2, in every command that computes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for args in (["sample"], ["eval", "--split", "val", "--data-dir", str(prepared)],
                 ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--max-steps", "1"]):
        result = cli(*args, "--threads", str(cores + 1))
        assert result.exit_code == 2 and one_line_error(result) and f"at most {cores}" in result.stderr, args
    assert not (tmp_path / "r").exists()


def test_a_sigint_while_the_commands_load_is_held_then_answered(monkeypatch, capsys):
    """poetgen.__main__ holds a SIGINT from its first line (Typer and the command modules take a second
    to load, and Python's own handler would end in a traceback there); poetgen.cli.main then answers it
    as any other: one line on stderr, exit 130, and the command does not run."""
    import os
    import signal

    import poetgen.__main__ as entry
    import poetgen.cli as cli

    seen = {}
    previous = signal.getsignal(signal.SIGINT)
    try:
        def fake_cli(interrupted):
            os.kill(os.getpid(), signal.SIGINT)  # as if it came while the commands loaded: held, not raised
            seen["held"] = interrupted()

        monkeypatch.setattr(cli, "main", fake_cli)
        entry.main()
        assert seen == {"held": True}
        monkeypatch.undo()
        ran = []
        monkeypatch.setattr(cli, "run", lambda app: ran.append(app))
        monkeypatch.setattr("poetgen.cli.errors._stopped", False)  # what fail() sets, put back afterwards
        with pytest.raises(SystemExit) as stop:
            cli.main(interrupted=lambda: True)
        assert stop.value.code == 130 and ran == []
        assert capsys.readouterr().err == "poetgen: interrupted\n"
    finally:
        signal.signal(signal.SIGINT, previous)
