"""--keywords: the plan's first keywords, each held by its line wherever the model puts it, in every
form, beside the rules of verse (rhyme, no third use, --strict), acrostic heads and best-of-N pruning;
the request's checks; a model that plans reads them as its plan. Tiny random models: the guarantees
are the decoder's."""

from __future__ import annotations

import json

import pytest
from cli_helpers import cli, one_line_error
from hypothesis import assume, given
from hypothesis import strategies as st
from test_sample_plan import PLAN_VOCAB, plan_checkpoint  # noqa: F401 (a fixture)
from test_verse import (
    DONG,
    MASKS,
    OTHER,
    PROPERTY,
    RHYMES,
    TONES,
    VOCAB,
    assert_heads_and_no_third_use,
    rhymes_in_one_group,
    tiny,
    uses,
)

from poetgen import checkpoint, prosody
from poetgen.errors import UsageError
from poetgen.forms import FORMS, detect_form, split_lines
from poetgen.sample import Generator, SampleOptions, Sampler, sample_request
from poetgen.sample.masks import verse_rules

POOL = DONG[:8] + OTHER[:24]  # keyword characters: some 平, most 仄


def keywords_from(draw_ids: list[list[int]]) -> tuple[str, ...]:
    """Keywords of distinct characters from POOL, by index lists."""
    used, out = set(), []
    for ids in draw_ids:
        word = ""
        for i in ids:
            if POOL[i] not in used:
                used.add(POOL[i])
                word += POOL[i]
        if word:
            out.append(word)
    return tuple(out)


KEYWORD_IDS = st.lists(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3), min_size=1, max_size=4)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), form=st.sampled_from(sorted(FORMS)),
       ids=KEYWORD_IDS, acrostic=st.booleans(), best_of=st.sampled_from([1, 4]),
       search=st.sampled_from(["line", "poem"]))
def test_each_line_holds_its_keyword_and_the_rules_of_verse_still_hold(model_seed, seed, form, ids, acrostic,
                                                                       best_of, search):
    f = FORMS[form]
    keywords = keywords_from(ids)
    heads = "".join(OTHER[24 + (model_seed + i) % (len(OTHER) - 24)] for i in range(f.lines)) if acrostic else ""
    assume(keywords and all(len(k) <= f.chars - 1 - bool(heads) for k in keywords))
    opts = SampleOptions(form=f, seed=seed, temperature=1.2, num=3, acrostic=heads, best_of=best_of,
                         keywords=keywords, search=search)
    for poem in Generator(tiny(model_seed), VOCAB).generate(opts, verse=verse_rules(opts, MASKS)):
        assert detect_form(poem.body) == f.name
        assert all(k in poem.lines[i][:-2] for i, k in enumerate(keywords)), (keywords, poem.body)  # not the end
        assert rhymes_in_one_group(poem), poem.body
        assert_heads_and_no_third_use(poem, heads)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), form=st.sampled_from(["wujue", "qijue"]),
       ids=KEYWORD_IDS)
def test_strict_places_keywords_only_where_their_tones_fit(model_seed, seed, form, ids):
    keywords = keywords_from(ids)
    assume(keywords and all(len(k) <= 3 for k in keywords))
    opts = SampleOptions(form=FORMS[form], seed=seed, temperature=1.0, num=2, best_of=2, keywords=keywords)
    try:
        rules = verse_rules(opts, MASKS, strict=True)
    except UsageError as e:  # no template holds them: said, never broken
        assert "keyword" in str(e)
        return
    for poem in Generator(tiny(model_seed), VOCAB).generate(opts, verse=rules):
        assert all(k in poem.lines[i] for i, k in enumerate(keywords)), (keywords, poem.body)
        assert max(uses(poem.body).values()) == 1, poem.body
        assert prosody.check_poem(poem.body, TONES, RHYMES).ok, poem.body


def test_strict_refuses_keywords_no_template_can_hold():
    four_ze = "".join(OTHER[:4])  # a line's 2nd and 4th characters differ in tone in every template
    opts = SampleOptions(form=FORMS["wujue"], keywords=(four_ze,))
    with pytest.raises(UsageError, match="keyword"):
        verse_rules(opts, MASKS, strict=True)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), ids=KEYWORD_IDS,
       spare=st.integers(0, 12), acrostic=st.booleans())
def test_free_form_keeps_lines_open_until_their_keywords_and_the_budget(model_seed, seed, ids, spare, acrostic):
    keywords = keywords_from(ids)
    assume(keywords)
    heads = "".join(OTHER[24 + i % (len(OTHER) - 24)] for i in range(len(keywords) + 1)) if acrostic else ""
    need = sum((i < len(heads)) + len(k) + 1 for i, k in enumerate(keywords))  # the least the request allows
    max_chars = max(need + spare, 6 * len(heads))
    opts = SampleOptions(seed=seed, temperature=1.5, num=4, best_of=1, keywords=keywords, max_chars=max_chars,
                         acrostic=heads)
    for poem in Generator(tiny(model_seed), VOCAB).generate(opts):
        lines = split_lines(poem.body)
        assert len(poem.body) <= max_chars, poem.body
        assert len(lines) >= len(keywords) and all(k in lines[i] for i, k in enumerate(keywords)), poem.body
        if heads:
            assert [line[0] for line in lines] == list(heads)


def test_given_keywords_open_the_plan_of_a_model_that_plans(plan_checkpoint):  # noqa: F811
    ckpt = checkpoint.load(plan_checkpoint)
    words = [PLAN_VOCAB.tokens[10] + PLAN_VOCAB.tokens[11], PLAN_VOCAB.tokens[12]]
    poems = Sampler(ckpt, sample_request(form="qijue", num=4, seed=3, keywords=words)).poems()
    for poem in poems:
        assert poem.plan[:2] == words and len(poem.plan) == 4
        assert words[0] in poem.lines[0] and words[1] in poem.lines[1]
    four = [PLAN_VOCAB.tokens[10 + i] for i in range(4)]
    full = Sampler(ckpt, sample_request(form="wujue", num=2, seed=3, keywords="、".join(four))).poems()
    assert all(p.plan == four for p in full)
    record = json.loads(cli("sample", "-c", str(plan_checkpoint), "--form", "wujue", "--seed", "2", "--format",
                            "jsonl", "--keywords", words[1]).stdout)
    assert record["plan"][0] == words[1] and words[1] in split_lines(record["text"])[0]
    with pytest.raises(TypeError, match="keywords"):
        sample_request(keywords=[5])


@pytest.mark.parametrize("args, words", [
    (["--keywords", ""], "--keywords is empty"),
    (["--keywords", "秋月,,孤雁"], "'秋月,,孤雁' holds an empty keyword"),  # never a silent shift to line 2
    (["--keywords", "秋月、孤雁、"], "holds an empty keyword"),
    (["--keywords", "秋月,ab"], "Han characters"),
    (["--keywords", "一二三四五"], "1 to 4"),
    (["--form", "wujue", "--keywords", "一,二,三,四,五"], "at most 4"),
    (["--form", "wujue", "--keywords", "一二三四,二"], None),  # fits a 五绝 line: no error here
    (["--form", "wujue", "--acrostic", "春夏秋冬", "--keywords", "一二三四"], "does not fit line 1"),
    (["--keywords", "秋月", "--prompt", "春"], "--prompt"),
    (["--keywords", "秋月", "--no-plan"], "--no-plan"),
    (["--form", "qijue", "--keywords", "月,月明,明月"], "more than 2 times"),
    (["--form", "qijue", "--strict", "--keywords", "明月,月"], "more than once"),
    (["--keywords", "一,二,三,四", "--max-chars", "7"], "--max-chars"),  # each needs 2: itself and a mark
    (["--keywords", "一,二,三,四,五,六,七,八,九"], "a plan has at most 8 keywords"),
    (["--form", "qijue", "--strict", "--acrostic", "春夏秋冬", "--keywords", "秋风"], "acrostic heads"),
])
def test_keywords_a_request_cannot_hold_are_one_line_errors(args, words):
    if words is None:
        sample_request(form="wujue", keywords=args[-1])
        return
    result = cli("sample", "-c", "/nonexistent.pt", *args)
    assert result.exit_code == 2 and one_line_error(result) and words in result.stderr, result.stderr


def test_a_model_that_does_not_plan_refuses_keywords(tiny_checkpoint):
    result = cli("sample", "-c", str(tiny_checkpoint), "--keywords", "一")
    assert result.exit_code == 2 and one_line_error(result) and "writes no plans" in result.stderr, result.stderr


def test_a_keyword_that_starts_with_its_head_is_written_after_it():
    """The head stands at the line's start; the keyword, though it starts with the same character, is
    placed after it, not read into the head."""
    f = FORMS["qijue"]
    heads = "".join(OTHER[24 + i] for i in range(4))
    keywords = (heads[0] + POOL[0], POOL[1])
    opts = SampleOptions(form=f, seed=3, temperature=1.2, num=4, acrostic=heads, best_of=2, keywords=keywords)
    for poem in Generator(tiny(7), VOCAB).generate(opts, verse=verse_rules(opts, MASKS)):
        assert [line[0] for line in poem.lines] == list(heads)
        assert keywords[0] in poem.lines[0][1:-2] and keywords[1] in poem.lines[1][:-2], poem.body


def test_a_free_form_plan_may_end_right_after_the_given_keywords(plan_checkpoint):  # noqa: F811
    word = PLAN_VOCAB.tokens[10]
    poems = Sampler(checkpoint.load(plan_checkpoint), sample_request(num=12, seed=1, temperature=1.5,
                                                                     keywords=word)).poems()
    assert all(p.plan[0] == word and all(p.plan) for p in poems)
    assert {len(p.plan) for p in poems} > {1}, [p.plan for p in poems]  # ended there, and went on
    assert 1 in {len(p.plan) for p in poems}


def test_keywords_are_parted_by_commas_or_any_run_of_spaces():
    from poetgen.sample.keywords import split_keywords

    assert split_keywords(" 秋月  孤雁，归舟、钓矶 , 江 ") == ("秋月", "孤雁", "归舟", "钓矶", "江")
