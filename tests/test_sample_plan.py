"""Sampling from a model whose records carry a poet and a plan (vocab.plans): the plan written after
the title, one keyword a line; --no-plan, --author (known, unknown, a model that knows none),
--show-plan and the JSON record's plan. A tiny random model: the structure is the decoder's, not the
model's."""

from __future__ import annotations

import json

import pytest
from cli_helpers import cli, one_line_error
from synth import ALPHABET
from tiny import MARKS, tiny_model

from poetgen import checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.forms import FORMS, detect_form, split_lines
from poetgen.sample import Sampler, sample_request
from poetgen.vocab import AUTHOR, KW, SPECIALS, Vocab

PLAN_VOCAB = Vocab([*SPECIALS, *ALPHABET, *MARKS, AUTHOR, KW])
POETS = {ALPHABET[1] + ALPHABET[2]: 40, ALPHABET[3] + ALPHABET[4]: 31}


@pytest.fixture(scope="module")
def plan_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.pt"
    checkpoint.save(path, tiny_model(5, vocab=PLAN_VOCAB), PLAN_VOCAB, ModelMeta(script="traditional", poets=POETS))
    return path


@pytest.mark.parametrize("form", ["wujue", "qilv"])
def test_a_plan_has_one_keyword_a_line_and_the_poem_keeps_its_form(plan_checkpoint, form):
    request = sample_request(form=form, num=6, seed=4, temperature=1.5)
    poems = Sampler(checkpoint.load(plan_checkpoint), request).poems()
    for poem in poems:
        assert len(poem.plan) == FORMS[form].lines
        assert all(1 <= len(k) <= 2 and all(c in ALPHABET for c in k) for k in poem.plan), poem.plan
        assert detect_form(poem.body) == FORMS[form].name
    again = Sampler(checkpoint.load(plan_checkpoint), request).poems()
    assert [(p.plan, p.body) for p in again] == [(p.plan, p.body) for p in poems]  # the seed makes both again
    assert len({tuple(p.plan) for p in poems}) > 1


def test_no_plan_writes_straight_after_the_title(plan_checkpoint):
    ckpt = checkpoint.load(plan_checkpoint)
    plain = Sampler(ckpt, sample_request(form="wujue", num=3, seed=4, plan=False)).poems()
    planned = Sampler(ckpt, sample_request(form="wujue", num=3, seed=4)).poems()
    assert all(p.plan is None for p in plain) and all(p.plan for p in planned)
    assert [p.body for p in plain] != [p.body for p in planned]


def test_a_free_form_plan_ends_where_the_model_ends_it(plan_checkpoint):
    poems = Sampler(checkpoint.load(plan_checkpoint), sample_request(num=8, seed=2, temperature=1.5)).poems()
    assert all(1 <= len(p.plan) <= 8 for p in poems) and len({len(p.plan) for p in poems}) > 1


def test_author_known_unknown_and_a_model_without_poets(plan_checkpoint, tiny_checkpoint):
    poet = next(iter(POETS))
    ok = cli("sample", "-c", str(plan_checkpoint), "--form", "wujue", "--seed", "3", "--author", poet,
             "--format", "jsonl")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["author"] == poet
    unknown = cli("sample", "-c", str(plan_checkpoint), "--author", ALPHABET[1] + ALPHABET[9])
    assert unknown.exit_code == 2 and one_line_error(unknown) and poet in unknown.stderr, unknown.stderr
    assert "knows 2" in unknown.stderr
    none = cli("sample", "-c", str(tiny_checkpoint), "--author", poet)
    assert none.exit_code == 2 and one_line_error(none) and "knows no poets" in none.stderr
    blank = cli("sample", "-c", str(plan_checkpoint), "--author", " ")
    assert blank.exit_code == 2 and "--author is empty" in blank.stderr


def test_show_plan_and_json_records(plan_checkpoint, tiny_checkpoint):
    args = ["sample", "-c", str(plan_checkpoint), "--form", "wujue", "--seed", "6", "--num", "2"]
    shown = cli(*args, "--show-plan")
    records = [json.loads(line) for line in cli(*args, "--format", "jsonl").stdout.splitlines()]
    plain = cli(*args)
    assert shown.exit_code == plain.exit_code == 0
    for record in records:
        assert len(record["plan"]) == 4
        assert f"〔{'、'.join(record['plan'])}〕" in shown.stdout.splitlines()
        assert all(line in plain.stdout.splitlines() for line in split_lines(record["text"]))
    assert "〔" not in plain.stdout
    old = json.loads(cli("sample", "-c", str(tiny_checkpoint), "--format", "jsonl", "--seed", "1").stdout)
    assert old["plan"] is None and old["author"] is None


def test_info_says_whether_a_model_plans_and_how_many_poets_it_knows(plan_checkpoint, tiny_checkpoint):
    assert "knows 2 poets" in cli("info", "-c", str(plan_checkpoint)).stdout
    assert json.loads(cli("info", "-c", str(plan_checkpoint), "--json").stdout)["poets"] == list(POETS)
    assert "none: writes a poem straight after its title" in cli("info", "-c", str(tiny_checkpoint)).stdout
