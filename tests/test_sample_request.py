"""The sampling request (poetgen.sample.sample_request): what no model could draw is refused, the words
are normalized and frozen, it loads no torch, and it is checked once on its way through the Sampler."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from tiny_sampling import CHARS

import poetgen.sample.request as request_module
from poetgen import checkpoint
from poetgen.errors import UsageError
from poetgen.forms import FORMS
from poetgen.sample import Sampler, SampleRequest, VerseOptions, sample_request


@pytest.mark.parametrize("given, needle", [
    ({"temperature": -1}, "--temperature"),
    ({"num": 10, "best_of": 64, "top_k": 0}, "--top-k"),
    ({"form": "sonnet"}, "unknown form"),
    ({"strict": True}, "--strict needs a regulated form"),
    ({"rhyme": "东"}, "--rhyme needs a regulated form"),
    ({"form": "wujue", "template": "ze-plain"}, "--template needs --strict"),
    ({"form": "wujue", "rhyme": "东", "no_rhyme": True}, "contradict"),
    ({"form": "wujue", "strict": True, "template": "no-such"}, "unknown template"),
    ({"title": "春" * 31}, "titles have at most 30"),
    ({"form": "qijue", "acrostic": "春风"}, "4 lines"),
    ({"acrostic": "春" * 21}, "--max-chars 126"),  # free form: six characters a line at least
    ({"form": "wujue", "prompt": "春风,"}, "--prompt does not fit"),
    ({"form": "wujue", "acrostic": "春风春风", "prompt": "汉"}, "acrostic head"),
])
def test_sample_request_refuses_what_no_model_could_draw(given, needle):
    with pytest.raises(UsageError, match=needle):
        sample_request(**given)


def test_sample_request_normalizes_the_words_and_freezes_them():
    request = sample_request(prompt=" 春风秋月夜花开, ", title="送 别", acrostic=" 春夏秋冬 ", form="七绝",
                             strict=True)
    opts = request.options
    assert (opts.prompt, opts.title, opts.acrostic) == ("春风秋月夜花开，", "送别", "春夏秋冬")
    assert opts.form == FORMS["qijue"]
    assert request.verse == VerseOptions(strict=True)
    assert 0 <= opts.seed < 2**31  # drawn when none is given
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.prompt = "秋"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.verse.strict = False


def test_sample_request_loads_no_torch():
    code = ("import sys; from poetgen.sample import sample_request; from poetgen.errors import UsageError\n"
            "sample_request(form='wujue', strict=True, template='ze-rhymed', rhyme='东', prompt='春', seed=1)\n"
            "try: sample_request(strict=True)\nexcept UsageError: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False"], out.stderr


def test_a_request_is_checked_once_and_the_sampler_makes_new_options(ckpt, monkeypatch):
    calls = {"check_decoding": 0, "check_verse": 0, "check_text": 0}
    for name in calls:
        def counted(*args, _name=name, _check=getattr(request_module, name)):
            calls[_name] += 1
            return _check(*args)
        monkeypatch.setattr(request_module, name, counted)
    request = sample_request(prompt=CHARS[0], form="wujue", num=2, seed=3)
    loaded = checkpoint.load(ckpt)
    sampler = Sampler(loaded, request)
    sampler.poems()
    opts, verse = sampler.options, sampler.rules
    assert calls == {"check_decoding": 1, "check_verse": 1, "check_text": 1}
    assert opts == request.options and verse is not None  # rhymed, no 重字 by default
    converted = sample_request(prompt="漢", seed=3)  # traditional input, a simplified model
    converted_sampler = Sampler(loaded, converted)
    converted_opts, verse = converted_sampler.options, converted_sampler.rules
    assert (converted.options.prompt, converted_opts.prompt, verse) == ("漢", "汉", None)
    assert isinstance(converted, SampleRequest)


def test_text_the_model_can_write_is_kept_verbatim(tmp_path):
    """A simplified model whose vocabulary holds 乾 keeps 乾 in prompt, heads and title (a conversion
    would make it 干); what it cannot write is converted (漢 → 汉)."""
    from tiny import save_tiny, tiny_model

    from poetgen.vocab import SPECIALS, Vocab

    vocab = Vocab([*SPECIALS, *CHARS, "干", *"，。？！；：、"])  # CHARS holds 乾 (U+4E7E)
    path = save_tiny(tmp_path / "s.pt", tiny_model(1, vocab), vocab, script="simplified")
    loaded = checkpoint.load(path)
    kept = Sampler(loaded, sample_request(prompt="乾", title="乾" + CHARS[0], form="wujue", acrostic="乾汉乾汉"))
    assert (kept.options.prompt, kept.options.title, kept.options.acrostic) == ("乾", "乾" + CHARS[0], "乾汉乾汉")
    assert all(p.body.startswith("乾") for p in kept.poems())
    assert Sampler(loaded, sample_request(prompt="漢")).options.prompt == "汉"
