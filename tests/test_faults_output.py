"""Faults where output goes: through symlinks and into special files, full disks, closed or full
stdout, readers that go away, places that cannot be written, missing folders. Bad output gives one line
on stderr and a non-zero exit, never a traceback; real processes where the process is the point."""

from __future__ import annotations

import os
import stat

import pytest
from cli_helpers import POETGEN, cli, one_line_error, shell

from poetgen.forms import detect_form

# Real processes whose stdout is full, closed or a pipe that closes early: `corpus stats` (no torch, quick)
# in every run, the commands that load a model under -m slow (tests/test_sample_cli.py pipes `sample` too).
WRITERS = [pytest.param("corpus stats --data-dir {prepared}", id="stats"),
           pytest.param("info -c {model}", id="info", marks=pytest.mark.slow),
           pytest.param("sample -c {model} --num 50 --best-of 1 --seed 1", id="sample", marks=pytest.mark.slow)]


def test_output_writes_through_a_symlink_and_into_special_files(tiny_checkpoint, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    result = cli("sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "1", "-o", str(link))
    assert result.exit_code == 0, result.stderr
    lines = target.read_text(encoding="utf-8").strip().splitlines()
    assert link.is_symlink() and len(lines) == 5 and detect_form("".join(lines[1:])) == "五绝"  # title + 4 lines
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", os.devnull)
    assert result.exit_code == 0 and result.stdout == "" and stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_full_disk_on_output_is_one_line(tiny_checkpoint):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", "/dev/full")
    assert result.exit_code == 1 and one_line_error(result) and "space" in result.stderr


@pytest.mark.parametrize("command", WRITERS)
def test_a_full_or_closed_stdout_is_one_line(tiny_checkpoint, prepared, command):
    command = command.format(model=tiny_checkpoint, prepared=prepared)
    if os.path.exists("/dev/full"):
        full = shell(f"{POETGEN} {command} > /dev/full")
        assert full.returncode == 1 and one_line_error(full) and b"space" in full.stderr, full.stderr
    closed = shell(f"{POETGEN} {command} >&-")
    assert closed.returncode == 1 and one_line_error(closed), closed.stderr


@pytest.mark.parametrize("command", WRITERS)
def test_readers_going_away_end_quietly(tiny_checkpoint, prepared, command):
    proc = shell(f"{POETGEN} {command.format(model=tiny_checkpoint, prepared=prepared)} | head -c 1 > /dev/null")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr


def test_read_only_places_are_one_line(tiny_checkpoint, prepared):
    for args in (["corpus", "prepare", "--data-dir", "/proc/poetgen-test"],
                 ["sample", "-c", str(tiny_checkpoint), "-o", "/proc/poetgen-test/poems.txt"],
                 ["train", "--out", "/proc/poetgen-test/run", "--data-dir", str(prepared), "--max-steps", "1"]):
        result = cli(*args)
        assert result.exit_code != 0 and one_line_error(result), (args, result.stderr)


def test_output_into_a_missing_folder_is_refused_like_cp(tmp_path):
    result = cli("sample", "--form", "wujue", "-o", str(tmp_path / "missing" / "x.txt"))
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_a_dangling_link_makes_no_folders_and_a_private_file_stays_private(tiny_checkpoint, tmp_path):
    """-o through a link to a folder that does not exist writes nothing and creates nothing there; -o
    over a file of mode 600 keeps the mode (the poems are not made world-readable)."""
    link = tmp_path / "d.txt"
    link.symlink_to(tmp_path / "nowhere" / "x.txt")
    result = cli("sample", "-c", str(tiny_checkpoint), "-o", str(link))
    assert result.exit_code != 0 and one_line_error(result) and not (tmp_path / "nowhere").exists()
    private = tmp_path / "private.txt"
    private.write_text("old\n")
    private.chmod(0o600)
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", str(private))
    assert result.exit_code == 0 and private.read_text() != "old\n"
    assert private.stat().st_mode & 0o777 == 0o600


def test_replacing_a_file_with_hard_links_says_so(tiny_checkpoint, tmp_path):
    """The output replaces the file whole (never half-written), so its other hard links keep the old
    text: said in a warning, not silently."""
    out, other = tmp_path / "poems.txt", tmp_path / "same-poems.txt"
    out.write_text("old\n")
    os.link(out, other)
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", str(out))
    assert result.exit_code == 0 and out.read_text() != "old\n" and other.read_text() == "old\n"
    assert "1 other hard link" in result.stderr and "old text" in result.stderr, result.stderr
    again = cli("sample", "-c", str(tiny_checkpoint), "--seed", "2", "-o", str(out))
    assert again.exit_code == 0 and "hard link" not in again.stderr  # the name now holds a file of its own


@pytest.mark.parametrize("output", ["", "."])
def test_an_output_that_is_a_folder_is_refused_at_once(tiny_checkpoint, tmp_path, output):
    """-o "" or -o FOLDER: one line naming the folder, exit 2 (not "Is a directory — free some space")."""
    for args in (["sample", "-c", str(tiny_checkpoint)], ["export", "-c", str(tiny_checkpoint), "--no-test"]):
        result = cli(*args, "-o", output)
        assert result.exit_code == 2 and one_line_error(result) and "is a folder" in result.stderr, result.stderr
    result = cli("sample", "-c", str(tiny_checkpoint), "-o", str(tmp_path))
    assert result.exit_code == 2 and "is a folder" in result.stderr
