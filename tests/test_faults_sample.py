"""Faults in `poetgen sample`'s arguments: extreme settings keep the form, long and ASCII-punctuated
prompts, fuzzed arguments give poems or one line, too many poems refused before the model loads."""

from __future__ import annotations

import json

import pytest
from cli_helpers import cli, one_line_error, runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import ALPHABET

from poetgen import checkpoint
from poetgen.cli import app
from poetgen.forms import FORMS, detect_form


@pytest.mark.parametrize("args", [["--temperature", "1e-40"], ["--top-p", "1e-300"],
                                  ["--temperature", "1e-40", "--top-p", "1e-300"]])
def test_extreme_settings_keep_the_form(tiny_checkpoint, args):
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--num", "3", "--seed", "1",
                                 "--title", ALPHABET[0], "--format", "jsonl", *args])
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        assert detect_form(json.loads(line)["text"]) == "五绝"


def test_a_long_free_prompt_is_kept_verbatim(tiny_checkpoint):
    prompt = "".join(ALPHABET[i % 40] for i in range(300)) + "。"
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--prompt", prompt, "--seed", "1", "--format",
                                 "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith(prompt)


def test_prompt_accepts_ascii_punctuation(tiny_checkpoint):
    prompt = "".join(ALPHABET[:5]) + ","
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--prompt", prompt, "--seed",
                                 "1", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith(prompt[:-1] + "，")


SAMPLE_ARGS = st.fixed_dictionaries({}, optional={
    "--temperature": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-40])),
    "--top-p": st.floats(allow_nan=True, allow_infinity=True),
    "--top-k": st.integers(-5, 100),
    "--num": st.integers(-2, 6),
    "--seed": st.integers(-5, 2**70),
    "--form": st.sampled_from(["free", "wujue", "qilv", "七绝", "sonnet", ""]),
    "--max-chars": st.integers(-1, 300),
    "--prompt": st.text(alphabet=ALPHABET[:40] + list("，。,.龘 "), max_size=12),
    "--acrostic": st.text(alphabet=ALPHABET[:40] + list("，a"), max_size=9),
})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(options=SAMPLE_ARGS)
def test_fuzzed_sample_arguments_give_poems_or_one_line(tiny_checkpoint, options):
    args = [x for k, v in options.items() for x in (k, str(v))]
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--format", "jsonl", *args])
    assert result.exit_code in (0, 2), (args, result.exception, result.stderr)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", (args, result.stderr)
        return
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all(r["text"] and r["text"][-1] in "。？！" for r in records), args
    form = options.get("--form")
    if form in FORMS or form == "七绝":
        name = FORMS[form].name if form in FORMS else form
        assert all(detect_form(r["text"]) == name for r in records), args


def test_too_many_poems_are_refused_before_loading(tiny_checkpoint, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(checkpoint, "load", no_loading)
    result = cli("sample", "-c", str(tiny_checkpoint), "--num", "100000")
    assert result.exit_code == 2 and one_line_error(result) and "--num" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--title", ""], "--title is empty"), (["--title", "   "], "--title is empty"),
    (["--acrostic", "\u3000\u3000\u3000\u3000"], "--acrostic holds only spaces"),
    (["--form", "qijue", "--rhyme", ""], "--rhyme is empty"),
    (["--form", "qijue", "--strict", "--no-rhyme"], "--strict rhymes"),
    (["--form", "qijue", "--max-chars", "3"], "--max-chars sets the length of a free-form poem"),
    (["--acrostic", "春" * 28, "--max-chars", "20"], "now 20, room for 3 heads")])
def test_words_that_say_nothing_or_cannot_apply_are_refused(tiny_checkpoint, args, needle):
    """A blank title, heads or rhyme, or a setting the form overrides, is one line and exit 2, not
    silently dropped (the title line would be missing, the heads or the rhyme ignored)."""
    result = cli("sample", "-c", str(tiny_checkpoint), *args)
    assert result.exit_code == 2 and one_line_error(result) and needle in result.stderr, result.stderr
    assert result.stdout == ""


def test_output_dash_is_stdout(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "1", "-o", "-")
    plain = cli("sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "1")
    assert result.exit_code == 0 and result.stdout == plain.stdout != ""
    assert not (tmp_path / "-").exists()
