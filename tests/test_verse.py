"""The rules of verse in the fixed forms (rhyme, no 重字) and best-of-N reranking, on tiny random models."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import ALPHABET
from tiny import prefix_score, survivors_by_hand, tiny_model

from poetgen import prosody
from poetgen.forms import FORMS, detect_form
from poetgen.model import LanguageModel
from poetgen.sample import Generator, SampleOptions
from poetgen.sample.masks import ProsodyMasks, verse_rules
from poetgen.vocab import SPECIALS, Vocab

RHYMES = prosody.load_rhymes("simplified")
DONG = sorted(RHYMES.groups["上平声一东"])[:16]  # 平, one group
YANG = sorted(RHYMES.groups["下平声七阳"])[:16]  # 平, another group
OTHER = [c for c in ALPHABET if c not in DONG + YANG and c not in RHYMES.of_char][:50]  # 仄 here
VOCAB = Vocab([*SPECIALS, *DONG, *YANG, *OTHER, *"，。？！"])
TONES = prosody.ToneTable.from_counts({**{c: [9, 0] for c in DONG + YANG}, **{c: [0, 9] for c in OTHER}})
MASKS = ProsodyMasks(VOCAB, TONES, RHYMES)
PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tiny(seed: int) -> LanguageModel:
    return tiny_model(seed, VOCAB)


def uses(body: str) -> Counter:
    """Uses per character, the second of a 叠字 pair (萧萧) not counted, marks left out."""
    out: Counter = Counter()
    for line in body.replace("，", "|").replace("。", "|").replace("？", "|").replace("！", "|").split("|"):
        for i, c in enumerate(line):
            if not (i > 0 and line[i - 1] == c and not (i > 1 and line[i - 2] == c)):
                out[c] += 1
    return out


def rhymes_in_one_group(poem) -> bool:
    ends = [line[-2] for line in poem.lines[1::2]]
    shared = set.intersection(*(RHYMES.of_char.get(c, set()) for c in ends))
    return bool(shared) and len(set(ends)) == len(ends) and not set(ends) & {poem.lines[0][-2]}


def assert_heads_and_no_third_use(poem, heads: str) -> None:
    """The lines start with the acrostic heads, and no character is used a third time (the heads, the
    user's own, not counted)."""
    counted = uses(poem.body)
    for h in heads:
        counted[h] -= 1
    assert max(counted.values()) <= 2, poem.body
    if heads:
        assert [line[0] for line in poem.lines] == list(heads)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), form=st.sampled_from(sorted(FORMS)),
       temperature=st.sampled_from([0.5, 1.0, 2.0]), acrostic=st.booleans(), best_of=st.sampled_from([1, 3, 4]),
       search=st.sampled_from(["line", "poem"]))
def test_fixed_forms_rhyme_and_use_no_character_a_third_time(model_seed, seed, form, temperature, acrostic,
                                                             best_of, search):
    f = FORMS[form]
    heads = "".join(OTHER[(model_seed + i) % len(OTHER)] for i in range(f.lines)) if acrostic else ""
    opts = SampleOptions(form=f, seed=seed, temperature=temperature, num=3, acrostic=heads, best_of=best_of,
                         search=search)
    for poem in Generator(tiny(model_seed), VOCAB).generate(opts, verse=verse_rules(opts, MASKS)):
        assert detect_form(poem.body) == f.name
        assert rhymes_in_one_group(poem), poem.body
        first_end = poem.lines[0][-2]
        if first_end in DONG + YANG:  # a 平 first line end rhymes with the rest (首句入韵)
            assert all(RHYMES.of_char[first_end] & RHYMES.of_char[line[-2]] for line in poem.lines[1::2]), poem.body
        assert_heads_and_no_third_use(poem, heads)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), form=st.sampled_from(["wujue", "qijue"]),
       temperature=st.sampled_from([0.7, 1.5]), search=st.sampled_from(["line", "poem"]))
def test_strict_uses_no_character_twice(model_seed, seed, form, temperature, search):
    opts = SampleOptions(form=FORMS[form], seed=seed, temperature=temperature, num=3, best_of=4, search=search)
    for poem in Generator(tiny(model_seed), VOCAB).generate(opts, verse=verse_rules(opts, MASKS, strict=True)):
        assert max(uses(poem.body).values()) == 1, poem.body
        assert prosody.check_poem(poem.body, TONES, RHYMES).ok


def test_prompt_is_kept_and_rhyme_group_can_be_chosen():
    prompt = "".join(OTHER[:4]) + YANG[0] + "，"
    opts = SampleOptions(form=FORMS["wulv"], seed=3, num=4, prompt=prompt)
    for poem in Generator(tiny(3), VOCAB).generate(opts, verse=verse_rules(opts, MASKS, rhyme_char=DONG[2])):
        assert poem.body.startswith(prompt)
        assert all(line[-2] in DONG for line in poem.lines[1::2]), poem.body


@pytest.mark.parametrize("form", ["wujue", "qilv", None])
def test_best_of_n_keeps_the_candidate_with_the_best_score(form):
    model = tiny(5)
    gen = Generator(model, VOCAB)
    opts = SampleOptions(form=FORMS[form] if form else None, seed=11, num=2, best_of=5, temperature=1.2,
                         title=DONG[0] + OTHER[0], prune=False)
    rules = verse_rules(opts, MASKS) if form else None
    candidates = gen.candidates(opts, 5, verse=rules)
    assert len(candidates) == 10
    direct_score = lambda body: prefix_score(model, VOCAB, opts.title, body)  # noqa: E731

    kept = gen.generate(opts, verse=rules)
    for p in range(2):
        group = candidates[p * 5:(p + 1) * 5]
        scores = [direct_score(c.body) for c in group]
        for c, s in zip(group, scores, strict=True):
            assert c.score == pytest.approx(s, abs=1e-4)
        assert kept[p].body == group[scores.index(max(scores))].body
        assert kept[p].candidates == 5
    assert [p.body for p in gen.generate(opts, verse=rules)] == [p.body for p in kept]  # reproducible


@pytest.mark.parametrize("form", ["qilv", "wujue"])
def test_pruning_keeps_the_best_so_far_and_changes_no_candidate(form):
    """Best of 8 with the default schedule: 6 go on at a quarter of the lines, 4 at half, 3 at three
    quarters, each time the best by the score of the lines written so far; the 3 left are exactly
    the candidates a run without pruning writes for those rows (same body, same log-probability)."""
    from poetgen.sample import CUTS

    model = tiny(6)
    gen = Generator(model, VOCAB)
    opts = SampleOptions(form=FORMS[form], seed=5, num=3, best_of=8, temperature=1.3, title=YANG[1] + OTHER[2],
                         search="poem")
    rules = verse_rules(opts, MASKS)
    full = gen.candidates(opts, 8, verse=rules)
    pruned = gen.candidates(opts, 8, verse=rules, cuts=CUTS)
    assert len(full) == 24 and len(pruned) == 9
    line, lines = FORMS[form].chars + 1, FORMS[form].lines  # a line and its mark
    for p in range(opts.num):
        group = full[p * 8:(p + 1) * 8]
        alive = survivors_by_hand(lambda r, n, group=group: prefix_score(model, VOCAB, opts.title, group[r].body,
                                                                         n * line),
                                  8, [(lines // 4, 6), (lines // 2, 4), (3 * lines // 4, 3)])
        kept = pruned[p * 3:(p + 1) * 3]
        assert [c.body for c in kept] == [group[r].body for r in alive]
        assert [c.logprob for c in kept] == [group[r].logprob for r in alive]
        assert all(rhymes_in_one_group(c) for c in kept)  # the rules' state went on with its rows
    chosen = gen.generate(opts, verse=rules)  # a whole-poem search prunes by default
    assert [c.body for c in chosen] == [max(pruned[p * 3:(p + 1) * 3], key=lambda c: c.score).body for p in range(3)]
    assert all(c.candidates == 8 for c in chosen)


@pytest.mark.parametrize("form", ["wujue", "qilv"])
def test_line_search_goes_on_from_each_poems_better_half_at_every_line(form, monkeypatch):
    """At the start of each line after the first, every poem's 4 rows go on from two copies of each of
    its 2 best by the score of the lines written so far (recomputed here by the model's full forward
    pass); each row's lines so far are those of the row it was copied from, to the end; the best
    candidate is kept."""
    from poetgen.sample import decode

    calls = []
    real = decode.resampled

    def spy(vocab, reranker, columns, logprob, each, form_key):
        kept = real(vocab, reranker, columns, logprob, each, form_key)
        calls.append((["".join(vocab.tokens[t] for t in row) for row in torch.stack(columns, 1).tolist()],
                      kept.tolist()))
        return kept

    monkeypatch.setattr(decode, "resampled", spy)
    model = tiny(7)
    f = FORMS[form]
    opts = SampleOptions(form=f, seed=3, num=2, best_of=4, temperature=1.3, title=DONG[1] + OTHER[3])
    rules = verse_rules(opts, MASKS)
    final = Generator(model, VOCAB).candidates(opts, 4, verse=rules)
    assert len(calls) == f.lines - 1 and len(final) == 8
    for k, (written, kept) in enumerate(calls, start=1):
        assert {len(w) for w in written} == {k * (f.chars + 1)}
        for p in range(2):
            rows = list(range(p * 4, (p + 1) * 4))
            so_far = {r: prefix_score(model, VOCAB, opts.title, written[r], len(written[r])) for r in rows}
            best = sorted(rows, key=lambda r: -so_far[r])[:2]
            assert sorted(kept[p * 4:(p + 1) * 4]) == sorted(best * 2)
        after = calls[k][0] if k < len(calls) else [c.body for c in final]
        assert all(after[r].startswith(written[kept[r]]) for r in range(8))
    assert all(rhymes_in_one_group(c) and detect_form(c.body) == f.name for c in final)
    for p, poem in enumerate(Generator(model, VOCAB).generate(opts, verse=rules)):
        assert poem.body == max(final[p * 4:(p + 1) * 4], key=lambda c: c.score).body


def test_a_cut_the_prompt_reaches_is_skipped():
    """A prompt of a whole first line: all 8 candidates are alike there, so the first cut is not made
    (it could only drop rows by their index); the cuts at half and three quarters are."""
    from poetgen.sample import CUTS

    model = tiny(6)
    gen = Generator(model, VOCAB)
    opts = SampleOptions(form=FORMS["qijue"], seed=5, num=2, best_of=8, temperature=1.3, title=YANG[1] + OTHER[2],
                         search="poem",
                         prompt="".join(OTHER[3:10]) + "，")
    rules = verse_rules(opts, MASKS)
    full = gen.candidates(opts, 8, verse=rules)
    pruned = gen.candidates(opts, 8, verse=rules, cuts=CUTS)
    for p in range(opts.num):
        group = full[p * 8:(p + 1) * 8]
        score_at = lambda r, n, group=group: prefix_score(model, VOCAB, opts.title, group[r].body, 8 * n)  # noqa: E731
        alive = survivors_by_hand(score_at, 8, [(2, 4), (3, 3)])
        assert [c.body for c in pruned[p * 3:(p + 1) * 3]] == [group[r].body for r in alive]
        assert all(c.body.startswith(opts.prompt) for c in group)


def test_no_prune_writes_every_candidate_to_the_end():
    gen = Generator(tiny(6), VOCAB)
    opts = SampleOptions(form=FORMS["qijue"], seed=9, num=4, best_of=8, temperature=1.3, search="poem", prune=False)
    rules = verse_rules(opts, MASKS)
    full = gen.candidates(opts, 8, verse=rules)
    chosen = gen.generate(opts, verse=rules)
    assert [c.body for c in chosen] == [max(full[p * 8:(p + 1) * 8], key=lambda c: c.score).body for p in range(4)]


def test_many_poems_come_in_bounded_batches():
    opts = SampleOptions(form=FORMS["wujue"], seed=2, num=30, best_of=64)
    batches = list(Generator(tiny(2), VOCAB).iter_generate(opts, verse=verse_rules(opts, MASKS)))
    assert [len(b) for b in batches] == [12, 12, 6]  # 800 rows at most: 12 poems of 64 candidates


def test_verse_rules_need_a_fixed_form():
    free = SampleOptions(seed=1)
    assert verse_rules(free, MASKS) is None  # free form has no rules of verse
    with pytest.raises(ValueError, match="fixed form"):  # sample_request refuses this before any model loads
        verse_rules(free, MASKS, strict=True)


def test_second_uses_and_doubles_weigh_what_the_rules_say():
    from poetgen.sample.masks import VerseRules

    rules = VerseRules(MASKS, rhyme=False, max_uses=2, again=0.25, doubled=0.5)
    state = rules.start(FORMS["wujue"], 2, 0)
    a, b, c = (VOCAB.stoi[ch] for ch in OTHER[:3])
    _, soft = state.masks(0, 0)
    assert float(soft[0, a]) == 1.0
    state.advance(0, 0, torch.tensor([a, b]))
    _, soft = state.masks(0, 1)
    # the character just written may come again at once as a 叠字 (its weight), later as a second use
    assert float(soft[0, a]) == 0.5 and float(soft[1, b]) == 0.5 and float(soft[0, b]) == 1.0
    state.advance(0, 1, torch.tensor([b, a]))
    _, soft = state.masks(0, 2)
    assert float(soft[0, a]) == 0.25 and float(soft[1, b]) == 0.25  # used once, not just before
    state.advance(0, 2, torch.tensor([a, b]))
    state.masks(0, 3)
    state.advance(0, 3, torch.tensor([c, c]))
    _, soft = state.masks(0, 4)
    assert float(soft[0, a]) == 0.0 and float(soft[1, b]) == 0.0  # a third use never


def test_a_double_poets_do_not_write_is_never_drawn():
    """With a 叠字 table, only the characters poets double ATTESTED_DOUBLE+ times may follow themselves;
    without one (older checkpoints), any may."""
    from poetgen.forms import ATTESTED_DOUBLE
    from poetgen.sample.masks import VerseRules

    a, b = OTHER[:2]
    masks = ProsodyMasks(VOCAB, TONES, RHYMES, doubles={a: ATTESTED_DOUBLE, b: ATTESTED_DOUBLE - 1})
    state = VerseRules(masks, rhyme=False, max_uses=2, doubled=0.5).start(FORMS["wujue"], 2, 0)
    ia, ib = VOCAB.stoi[a], VOCAB.stoi[b]
    state.masks(0, 0)
    state.advance(0, 0, torch.tensor([ia, ib]))
    _, soft = state.masks(0, 1)
    assert float(soft[0, ia]) == 0.5 and float(soft[1, ib]) == 0.0  # a is attested often enough, b is not
    state.advance(0, 1, torch.tensor([VOCAB.stoi[OTHER[2]]] * 2))
    _, soft = state.masks(0, 2)
    assert float(soft[1, ib]) == state.rules.again  # not at once: a second use, as any character's
    assert not masks.may_double[VOCAB.stoi[OTHER[3]]] and ProsodyMasks(VOCAB, TONES, RHYMES).may_double.all()
    # drawn: a model that loves b doubles it only as a second use elsewhere, never at once
    model = tiny(3)
    with torch.no_grad():
        model.head.bias[ib] += 8.0
    opts = SampleOptions(form=FORMS["wujue"], seed=1, num=4, best_of=1)
    for poem in Generator(model, VOCAB).generate(opts, verse=verse_rules(opts, masks)):
        assert b + b not in poem.body


def test_default_rules_weigh_second_uses_per_form_and_no_rhyme_does_not():
    from poetgen.sample.masks import SECOND_USE_WEIGHT

    for key in ("wujue", "qilv"):
        rules = verse_rules(SampleOptions(form=FORMS[key]), MASKS)
        assert (rules.again, rules.doubled) == SECOND_USE_WEIGHT[key] and rules.again < 1
        plain = verse_rules(SampleOptions(form=FORMS[key]), MASKS, rhyme=False)
        assert (plain.again, plain.doubled) == (1.0, 1.0)
