"""Glyph normalization in simplified script: variant forms to the standard GB 2312 form, a BMP form
for characters t2s puts outside it, GB 2312 characters never merged; counted and auditable."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import runner
from synth import make_corpus
from tiny import save_tiny, tiny_model

from poetgen import corpus
from poetgen.cli import app
from poetgen.glyphs import LEFT_AMBIGUOUS, LEFT_OUTSIDE_BMP, Normalizer, drawable, in_gb2312
from poetgen.sample import Generator, SampleOptions
from poetgen.text import to_script
from poetgen.vocab import SPECIALS, Vocab

NO_FORM = "𪭢"  # outside the BMP, with no BMP form in the tables


@pytest.mark.parametrize(("source", "expected"), [
    ("劒", "剑"), ("疎", "疏"), ("鴈", "雁"), ("鏁", "锁"),  # variants GB 2312 lacks: its one standard form
    ("劍", "剑"), ("漢", "汉"),  # plain t2s
    ("乾坤", "乾坤"), ("宫商角徵羽", "宫商角徵羽"),  # GB 2312 characters: never merged (t2s reads the phrase)
    ("勅", "勅"),  # several standard forms (敕 徕 来): left
    ("鑪", "鑪"),  # t2s gives 𬬻 (outside the BMP): the source's own character
    ("\uf900", "岂"),  # a compatibility ideograph: its unified character (豈), then t2s
    (NO_FORM, NO_FORM),
])
def test_one_character(source, expected):
    assert Normalizer()(source) == expected


def test_changes_are_counted_by_kind_with_their_pairs():
    n = Normalizer()
    assert n("劒劒疎鑪勅" + NO_FORM) == "剑剑疏鑪勅" + NO_FORM
    assert n.counts == {"variant": 3, "outside_bmp": 1, LEFT_AMBIGUOUS: 1, LEFT_OUTSIDE_BMP: 1}
    assert n.pairs[("劒", "剑", "variant")] == 2
    assert n.pairs[("𬬻", "鑪", "outside_bmp")] == 1


def test_gb2312_characters_are_never_merged():
    n = Normalizer()
    for ch in "乾徵於后":  # their variant groups hold other GB 2312 characters (干 征 于 後)
        assert n.char(ch, ch) == (ch, None) and drawable(ch)


def test_every_standard_form_is_in_gb2312_and_stable():
    n = Normalizer()
    for ch in "劒疎鴈嬾慙簷猨歛煖壻徧堦箒蘂檝鏁筯":
        std = n(ch)
        assert std != ch and in_gb2312(std) and n(std) == std
        assert not drawable(ch) and drawable(std)


def test_traditional_text_stays_as_the_source_has_it():
    assert to_script("劒疎乾坤", "traditional") == "劒疎乾坤"
    assert to_script("劒疎乾坤", "simplified") == "剑疏乾坤"


def test_build_normalizes_counts_and_lists_every_pair(tmp_path):
    extra = [{"id": f"variants-{i}", "title": "劒", "author": "",
              "paragraphs": [f"劒疎鴈乾徵山，{NO_FORM}水水山水鑪。"]} for i in range(40)]
    root = make_corpus(tmp_path / "src", poems=60, extra=extra)
    result = corpus.build(tmp_path / "data", source=root / "package", script="simplified", min_count=1)
    glyphs = result.meta["glyphs"]
    assert glyphs["changed"]["variant"] >= 40 * 4  # 劒 疎 鴈 in the body, 劒 in the title (and the
    assert glyphs["changed"]["outside_bmp"] == 40  # synthetic alphabet's own variants); 鑪 (t2s: 𬬻)
    assert glyphs["left"][LEFT_OUTSIDE_BMP] == 40
    assert glyphs["vocab_outside_bmp"] == 0 and glyphs["outside_bmp_as_unknown"] == 40
    vocab = json.loads((tmp_path / "data" / "vocab.json").read_text(encoding="utf-8"))
    assert {"剑", "疏", "雁", "鑪"} <= set(vocab)
    assert not {"劒", "疎", "鴈", NO_FORM, "𬬻"} & set(vocab)
    rows = [line.split("\t") for line in (tmp_path / "data" / corpus.GLYPHS_FILE).read_text(encoding="utf-8")
            .splitlines()[1:]]
    assert ["劒", "剑", "variant", str(40 * 2)] in rows
    assert ["疎", "疏", "variant", "40"] in rows
    assert sum(int(r[3]) for r in rows if r[2] == "variant") == glyphs["changed"]["variant"]
    assert ["𬬻", "鑪", "outside_bmp", "40"] in rows
    stats = runner.invoke(app, ["corpus", "stats", "--data-dir", str(tmp_path / "data")])
    assert stats.exit_code == 0 and "variant forms made standard" in stats.stdout
    traditional = corpus.build(tmp_path / "trad", source=root / "package", script="traditional")
    assert traditional.meta["glyphs"]["tables"] is None
    assert "劒" in json.loads((tmp_path / "trad" / "vocab.json").read_text(encoding="utf-8"))


def test_a_model_never_writes_a_variant_form_and_user_text_is_normalized(tmp_path):
    chars = [chr(0x4E00 + 7 * k) for k in range(30)] + ["剑", "劒"]
    vocab = Vocab([*SPECIALS, *chars, *"，。？！；："])
    model = tiny_model(0, vocab, layers=1, emb_size=8, hidden_size=8)  # its own: the test changes a weight
    with torch.no_grad():
        model.head.bias[vocab.stoi["劒"]] = 30.0  # the model loves the variant
    poems = Generator(model, vocab, "simplified").generate(SampleOptions(num=4, seed=1, best_of=1))
    assert all("劒" not in p.body for p in poems) and any(p.body for p in poems)
    assert any("劒" in p.body for p in Generator(model, vocab).generate(SampleOptions(num=4, seed=1, best_of=1)))
    path = save_tiny(tmp_path / "m.pt", model, vocab, "simplified")
    result = runner.invoke(app, ["sample", "-c", str(path), "--prompt", "劒", "--seed", "1", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith("剑")
