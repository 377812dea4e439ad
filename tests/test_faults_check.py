"""Faults in `poetgen check`'s input: bytes that are not UTF-8, a folder, a missing stdin, stdin as
`-` and through a pipe, a reader that goes away, letters for characters, one huge line."""

from __future__ import annotations

import pytest
from cli_helpers import POETGEN, cli, one_line_error, real_poetgen, shell
from synth import ALPHABET


def test_check_input_faults(tmp_path, tiny_checkpoint):
    result = cli("check", "-c", str(tiny_checkpoint), input=b"\xff\xfe bad bytes\n")
    assert result.exit_code == 2 and one_line_error(result) and "UTF-8" in result.stderr
    result = cli("check", "-c", str(tiny_checkpoint), "--file", str(tmp_path))
    assert result.exit_code == 2 and one_line_error(result) and "folder" in result.stderr
    result = cli("check", "-c", str(tiny_checkpoint), "-", ALPHABET[1])
    assert result.exit_code == 2 and one_line_error(result) and "stdin" in result.stderr
    closed = shell(f"{POETGEN} check -c {tiny_checkpoint} <&-")  # a real process without a stdin
    assert closed.returncode == 2 and one_line_error(closed)


def test_check_keeps_its_verdict_when_the_reader_goes_away(tiny_checkpoint):
    poem = "，".join("".join(ALPHABET[i * 5:(i + 1) * 5]) for i in range(3)) + "。"
    many = ("\n\n".join([poem] * 5000) + "\n").encode()  # far more verdicts than a pipe holds
    proc = shell(f"{POETGEN} check -c {tiny_checkpoint} | head -n 1 > /dev/null; echo ${{PIPESTATUS[0]}}", input=many)
    assert proc.stdout.decode().strip() == "1", proc.stderr  # not regulated: the verdict, not 0
    assert b"Traceback" not in proc.stderr


def test_check_reads_stdin_as_dash_and_through_a_pipe_path():
    """`check -`, `check --file -` and `check --file /dev/stdin` read the piped poems (a poem the
    shipped model wrote)."""
    poem = "白日登高出，苍梧长短空。云南皆少写，花落自难穷。\n".encode()
    outputs = []
    for args in (["-"], ["--file", "-"], []):
        result = cli("check", *args, input=poem)
        assert result.exit_code == 0, (args, result.stderr)
        outputs.append(result.stdout)
    proc = real_poetgen("check", "--file", "/dev/stdin", input=poem)  # a real pipe behind /dev/stdin
    assert proc.returncode == 0, proc.stderr.decode()
    outputs.append(proc.stdout.decode())
    assert outputs[0].startswith("五绝") and len(set(outputs)) == 1
    both = cli("check", "-", "--file", "x.txt", input=poem)
    assert both.exit_code == 2 and one_line_error(both)


def test_check_fails_a_poem_of_letters(tiny_checkpoint):
    result = cli("check", "-c", str(tiny_checkpoint), "abcd尽，efgh流。ijkl目，mnop楼。")
    assert result.exit_code == 1 and "not Chinese" in result.stdout


def test_a_huge_one_line_check_input_is_refused_without_reading_it_all_into_a_poem(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("春" * 2_000_000, encoding="utf-8")
    result = cli("check", "--file", str(big))
    assert result.exit_code == 2 and "separate poems by blank lines" in result.stderr


def test_a_byte_order_mark_is_not_text(tmp_path, tiny_checkpoint):
    """A file saved with a UTF-8 byte-order mark reads as the same poems as one without."""
    poems = f"{ALPHABET[0] * 5}，{ALPHABET[1] * 5}。\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(poems, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + poems.encode("utf-8"))
    a = cli("check", "-c", str(tiny_checkpoint), "--file", str(plain), "--json")
    b = cli("check", "-c", str(tiny_checkpoint), "--file", str(marked), "--json")
    assert a.stdout == b.stdout != "" and a.exit_code == b.exit_code
    piped = cli("check", "-c", str(tiny_checkpoint), "--json", input=b"\xef\xbb\xbf" + poems.encode("utf-8"))
    assert piped.stdout == a.stdout


@pytest.mark.parametrize("given", [["《静夜思》"], ["-"]])
def test_a_title_with_no_poem_is_said_to_be_one(given):
    result = real_poetgen("check", *given, input="《静夜思》\n\n".encode())
    err = result.stderr.decode()
    assert result.returncode == 2 and "only 《静夜思》" in err and "input is empty" not in err, err
