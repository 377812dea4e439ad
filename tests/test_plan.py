"""The plan in the records: the keyword rule, the poets, the shares and the corpus's streams."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from synth import ALPHABET, make_corpus, random_poem

from poetgen import corpus, plan
from poetgen.errors import CorpusError
from poetgen.vocab import AUTHOR, KW, Vocab


def _bodies(n: int, seed: int = 0) -> list[str]:
    """Bodies of random lines, where 甲乙 (a word) stands in every tenth line."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lines = ["".join(rng.choice(ALPHABET) for _ in range(5)) for _ in range(4)]
        if rng.random() < 0.4:
            lines[0] = lines[0][:2] + "甲乙" + lines[0][4]
        out.append(f"{lines[0]}，{lines[1]}。{lines[2]}，{lines[3]}。")
    return out


def test_body_lines_split_at_every_line_end():
    assert plan.body_lines("春眠不觉晓，处处闻啼鸟。") == ["春眠不觉晓", "处处闻啼鸟"]
    assert plan.body_lines("一二；三四、五") == ["一二", "三四", "五"]
    assert plan.body_lines("") == []


def test_a_word_that_holds_together_is_the_keyword():
    rule = plan.KeywordRule.fit(_bodies(600))
    assert rule.pmi("甲乙") > plan.MIN_PMI
    line = ALPHABET[0] + ALPHABET[1] + "甲乙" + ALPHABET[2]
    assert rule.keyword(line) == "甲乙"


def test_without_a_word_the_rarest_common_character_is_the_keyword():
    rule = plan.KeywordRule.fit(_bodies(600))
    line = "".join(ALPHABET[:5])  # random pairs: none holds together
    assert all(rule.pmi(line[i:i + 2]) < plan.MIN_PMI for i in range(4) if rule.pairs[line[i:i + 2]])
    expected = min(line, key=lambda c: rule.char_poems[c])
    assert rule.keyword(line) == expected
    assert rule.plan(f"{line}，{line}。") == [expected, expected]
    assert rule.keyword("") == ""


def test_poets_need_enough_poems_and_a_name():
    authors = ["甲"] * plan.MIN_POET_POEMS + ["乙"] * (plan.MIN_POET_POEMS - 1) + ["无名氏"] * 99 + [""] * 99
    assert plan.poets(authors) == {"甲": plan.MIN_POET_POEMS}


def test_the_share_of_records_is_fixed_by_the_id():
    ids = [f"id-{i}" for i in range(2000)]
    first = [plan.carries(i, "plan", plan.PLAN_SHARE) for i in ids]
    assert first == [plan.carries(i, "plan", plan.PLAN_SHARE) for i in ids]
    assert abs(sum(first) / len(ids) - plan.PLAN_SHARE / 100) < 0.04
    assert first != [plan.carries(i, "poet", plan.PLAN_SHARE) for i in ids]  # independent draws


def test_a_vocabulary_without_markers_refuses_a_plan():
    vocab = Vocab.build(Counter("春风"))
    assert not vocab.plans
    spring, wind = vocab.stoi["春"], vocab.stoi["风"]
    assert vocab.encode_record("题", "春风") == [vocab.bos_id, vocab.unk_id, vocab.sep_id, spring, wind, vocab.eos_id]
    with pytest.raises(CorpusError, match="plan"):
        vocab.encode_record("题", "春风", plan=["春"])


def test_train_records_carry_poet_and_plan_and_val_records_neither(tmp_path):
    rng = random.Random(5)
    poet = [dict(random_poem(rng, 1000 + i), author="王某") for i in range(120)]
    package = make_corpus(tmp_path / "pkg", poems=300, extra=poet)
    out = tmp_path / "prepared"
    meta = corpus.build(out, package, script="traditional").meta
    assert list(meta["poets"]) == ["王某"]
    vocab = Vocab.load(out / "vocab.json")
    assert vocab.tokens[-2:] == [AUTHOR, KW]
    train = np.fromfile(out / "train.bin", dtype=np.uint16).tolist()
    train_poems = list(corpus.iter_poems(out, "train"))
    records = _records(train, vocab.bos_id)
    assert len(records) == len(train_poems)
    with_plan = 0
    for poem, record in zip(train_poems, records, strict=True):
        head = record[:record.index(vocab.sep_id)]
        if vocab.kw_id in head:  # the whole plan, one <kw> a line
            with_plan += 1
            assert head.count(vocab.kw_id) == len(plan.body_lines(poem.body))
        assert (vocab.author_id in head) <= (poem.author == "王某")
    assert 0.65 < with_plan / len(records) < 0.95
    named = sum(vocab.author_id in r for r in records)
    assert 0 < named < sum(p.author == "王某" for p in train_poems)  # a share of the poet's records name him
    for split in ("val", "test"):
        stream = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        assert not np.isin(stream, [vocab.kw_id, vocab.author_id]).any()
    for p in train_poems:
        assert len(p.plan) == len(plan.body_lines(p.body))
        assert all(k and k in line for k, line in zip(p.plan, plan.body_lines(p.body), strict=True))


def _records(stream: list[int], bos: int) -> list[list[int]]:
    starts = [i for i, t in enumerate(stream) if t == bos] + [len(stream)]
    return [stream[a:b] for a, b in zip(starts, starts[1:], strict=False)]
