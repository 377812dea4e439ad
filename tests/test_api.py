"""The Python API, called as a notebook user would: import poetgen, load, generate, check."""

from __future__ import annotations

import subprocess
import sys

import pytest
from synth import ALPHABET
from tiny import PING, ZE

import poetgen
from poetgen.errors import UsageError
from poetgen.forms import detect_form


def test_import_poetgen_loads_no_torch():
    code = "import sys, poetgen; print('torch' in sys.modules, callable(poetgen.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_load_generate_and_make_a_poem_again(tiny_checkpoint):
    model = poetgen.load(tiny_checkpoint)
    poems = model.generate(form="qijue", num=3, seed=7)
    assert len(poems) == 3 and all(detect_form(p.body) == "七绝" for p in poems)
    assert [(p.seed, p.index) for p in poems] == [(7, 0), (7, 1), (7, 2)]
    again = model.generate(form="七绝", num=poems[2].index + 1, seed=poems[2].seed)[-1]
    assert (again.title, again.body) == (poems[2].title, poems[2].body)
    text = str(poems[0])
    assert text.split("\n")[0] == f"《{poems[0].title}》" and text.split("\n")[1:] == poems[0].lines
    drawn = model.generate(form="wujue", title=ALPHABET[0])[0]
    assert isinstance(drawn.seed, int) and drawn.title == ALPHABET[0]


def test_generate_refuses_what_sample_refuses(tiny_checkpoint):
    model = poetgen.load(tiny_checkpoint)
    with pytest.raises(UsageError, match="--temperature"):
        model.generate(form="qijue", temperature=-1)
    with pytest.raises(UsageError, match="form"):
        model.generate(form="sonnet")


def test_check_a_poem(tiny_checkpoint):
    """The verdict with the tiny model's tone table (tiny.TONE_COUNTS: PING reads 平, ZE 仄) and the real
    rhyme data, in which 丸 and 乾 (干) both belong to 十四寒."""
    ping, ze = "".join(PING), "".join(ZE)  # ping[5] left out (丣 reads 酉 in simplified), ping[8] is 丸
    good = (ze[0] + ze[1] + ping[0] + ping[1] + ze[2] + "，" + ping[2] + ping[3] + ze[3] + ze[4] + "丸。"
            + ping[4] + ping[6] + ping[7] + ze[6] + ze[7] + "，" + ze[8] + ze[9] + ze[10] + ping[9] + "乾。")
    result = poetgen.check(good, model=tiny_checkpoint)  # 仄起首句不入韵 to the letter, rhymed in 十四寒
    assert (result.form, result.ok, result.template, result.violations) == ("五绝", True, "仄起首句不入韵", [])
    assert result.rhyme_group == "十四寒" and result.to_dict()["ok"] is True
    poem = "".join(ALPHABET[i] for i in range(5)) + "，" + "".join(ALPHABET[i] for i in range(5, 10)) + "。"
    result = poetgen.check(poem * 2, model=tiny_checkpoint)  # every character 平: wrong tones, no rhyme
    assert result.form == "五绝" and result.ok is False and result.to_dict()["form"] == "五绝"
    assert result.violations and result.rhyme_group is None
    assert {(v["line"], v["position"]) for v in result.violations} == {(1, 2), (2, 4), (3, 4), (3, 5), (4, 2)}
    with pytest.raises(UsageError, match="one poem"):
        poetgen.check("hello", model=tiny_checkpoint)


@pytest.mark.parametrize(("words", "name"), [
    (dict(form=None), "form"), (dict(prompt=None), "prompt"), (dict(form="qijue", rhyme=5), "rhyme"),
    (dict(acrostic=["春"]), "acrostic"), (dict(num=2.5), "num"), (dict(num=True), "num"),
    (dict(best_of=2.0), "best_of"),
    (dict(top_k=1.5), "top_k"), (dict(top_p=True), "top_p"), (dict(seed="1"), "seed"), (dict(seed=1.5), "seed"),
    (dict(temperature="0.8"), "temperature")])
def test_a_word_of_the_wrong_type_is_a_type_error_naming_it(tiny_checkpoint, words, name):
    model = poetgen.load(tiny_checkpoint)
    with pytest.raises(TypeError, match=f"^{name} must be "):
        model.generate(**words)


@pytest.mark.parametrize("poem", [None, 5, ["一"], b"\xe4\xb8\x80"])
def test_check_of_something_not_a_string_is_a_type_error(poem):
    with pytest.raises(TypeError, match="^poem must be a string"):
        poetgen.check(poem)
