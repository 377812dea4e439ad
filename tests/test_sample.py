"""Decoding (poetgen.sample's Generator): well-formed poems of every form and free form, acrostics,
seeds, prompts and titles, the fast stepper, top-p and top-k, the draw and its masks, streaming and
progress, and poems that do not depend on what is drawn beside them or on the batch size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_sampling import CHARS, VOCAB, tiny_model

from poetgen.forms import FORMS, STOPS, detect_form, split_lines
from poetgen.sample import Generator, SampleOptions, Streams, draw, filter_logits
from poetgen.steppers import Stepper
from poetgen.vocab import SPECIALS

FORM_KEYS = st.sampled_from(sorted(FORMS))


PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), form=FORM_KEYS,
       temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]), acrostic=st.booleans(), cell=st.sampled_from(["lstm", "gru"]))
def test_every_form_poem_is_well_formed(model_seed, seed, form, temperature, acrostic, cell):
    f = FORMS[form]
    heads = "".join(CHARS[(model_seed + i) % len(CHARS)] for i in range(f.lines)) if acrostic else ""
    opts = SampleOptions(form=f, acrostic=heads, seed=seed, temperature=temperature, num=3)
    for poem in Generator(tiny_model(model_seed, cell), VOCAB).generate(opts):
        assert detect_form(poem.body) == f.name, poem.body
        assert len(poem.lines) == f.lines
        if heads:
            assert [line[0] for line in poem.lines] == list(heads)
        assert poem.logprob < 0


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1), max_chars=st.integers(2, 60),
       prompt_len=st.integers(0, 3))
def test_free_form_poems_end_cleanly(model_seed, seed, max_chars, prompt_len):
    prompt = "".join(CHARS[:prompt_len])
    opts = SampleOptions(prompt=prompt, seed=seed, max_chars=max_chars, temperature=1.5, num=2)
    for poem in Generator(tiny_model(model_seed), VOCAB).generate(opts):
        assert poem.body.startswith(prompt)
        assert poem.body[-1] in STOPS
        assert len(poem.body) <= max(max_chars, prompt_len + 1)  # --max-chars N: at most N, the marks counted
        assert all(len(line) >= 2 for line in split_lines(poem.body))  # no empty line
        assert all(c not in SPECIALS for c in poem.body)


@PROPERTY
@given(model_seed=st.integers(0, 10_000), heads=st.text(alphabet=CHARS, min_size=1, max_size=6),
       spare=st.integers(0, 30))
def test_free_form_acrostic_sets_the_lines_within_the_budget(model_seed, heads, spare):
    max_chars = 6 * len(heads) + spare  # the least the request allows, and more
    opts = SampleOptions(acrostic=heads, seed=1, num=3, temperature=1.5, max_chars=max_chars)
    for poem in Generator(tiny_model(model_seed), VOCAB).generate(opts):
        assert [line[0] for line in poem.lines] == list(heads)
        assert poem.body[-1] in STOPS and len(poem.body) <= max_chars, poem.body


@PROPERTY
@given(model_seed=st.integers(0, 10_000), seed=st.integers(0, 1000), form=FORM_KEYS)
def test_greedy_is_deterministic_and_seeds_reproduce(model_seed, seed, form):
    gen = Generator(tiny_model(model_seed), VOCAB)
    greedy = gen.generate(SampleOptions(form=FORMS[form], temperature=0, num=3, seed=seed))
    assert len({p.body for p in greedy}) == 1
    assert gen.generate(SampleOptions(form=FORMS[form], temperature=0, seed=seed + 1))[0].body == greedy[0].body
    a = gen.generate(SampleOptions(form=FORMS[form], seed=seed, num=2, temperature=1.0))
    b = gen.generate(SampleOptions(form=FORMS[form], seed=seed, num=2, temperature=1.0))
    assert [p.body for p in a] == [p.body for p in b]
    top1 = gen.generate(SampleOptions(form=FORMS[form], seed=seed, temperature=1.0, top_k=1))
    assert top1[0].body == greedy[0].body


def test_prompt_and_title_condition_the_poem():
    gen = Generator(tiny_model(3), VOCAB)
    prompt = CHARS[5] + CHARS[6] + CHARS[7] + CHARS[8] + CHARS[9] + "，" + CHARS[1]
    poem = gen.generate(SampleOptions(prompt=prompt, form=FORMS["wujue"], seed=2))[0]
    assert poem.body.startswith(prompt) and detect_form(poem.body) == "五绝"
    title = CHARS[2] * 3
    titled = gen.generate(SampleOptions(title=title, seed=2, form=FORMS["qilv"]))[0]
    assert titled.title == title
    # the poem's log-probability is the model's score of the body given this title, computed here directly
    ids = torch.tensor([VOCAB.encode_record(title, titled.body)])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(3)(ids[:, :-1])[0], -1)[0]
    start = len(title) + 2  # the first body token's index in the record
    direct = sum(float(logp[t - 1, ids[0, t]]) for t in range(start, ids.size(1)))
    assert titled.logprob == pytest.approx(direct, abs=1e-3)
    other = gen.generate(SampleOptions(title=CHARS[9] * 3, seed=2, form=FORMS["qilv"]))[0]
    assert other.logprob != titled.logprob  # the title is read by the model, not just echoed


def test_fast_lstm_step_matches_the_module():
    model = tiny_model(11, layers=3)
    stepper = Stepper(model)
    ids = torch.randint(4, len(VOCAB), (2, 9))
    with torch.no_grad():
        full, _ = model(ids)
    logits, state = stepper.prefill(ids[:, :1])
    outs = [logits]
    for t in range(1, 9):
        logits, state = stepper.step(ids[:, t], state)
        outs.append(logits)
    assert torch.allclose(torch.stack(outs, 1), full, atol=1e-5)


def test_the_stepper_hands_back_cpu_float_logits_and_takes_cpu_ids():
    """What lets `sample --device cuda` keep its masks and random streams on the CPU: ids go to the
    model's device, logits come back as fp32 on the CPU (here both are the CPU, so this checks the contract)."""
    stepper = Stepper(tiny_model(3))
    logits, state = stepper.prefill(torch.tensor([[1, 5, 6]]))
    assert logits.device.type == "cpu" and logits.dtype == torch.float32 and stepper.device.type == "cpu"
    logits, state = stepper.step(torch.tensor([7]), stepper.select(state, torch.tensor([0])))
    assert logits.shape == (1, len(VOCAB)) and logits.dtype == torch.float32


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, None, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_logits(logits, 2, None).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, None, 1.0).isfinite().all()


@pytest.mark.parametrize("vocab", [5, 64, 130, 7271])
def test_draw_follows_the_weights_and_never_takes_a_zero(vocab):
    torch.manual_seed(vocab)
    weights = torch.rand(vocab) ** 4
    weights[torch.randperm(vocab)[: vocab // 3]] = 0.0
    weights[-1] = 0.5  # the ragged last block counts too
    rows = weights.expand(20000, -1).contiguous()
    picks = draw(rows, torch.Generator().manual_seed(0))
    assert bool((weights[picks] > 0).all())
    freq = torch.bincount(picks, minlength=vocab).double() / len(picks)
    expected = weights.double() / weights.sum()
    assert float((freq - expected).abs().max()) < 0.02


@pytest.mark.parametrize("options", [{}, {"temperature": 0.0}, {"top_k": 3}, {"top_p": 0.5}, {"temperature": 1e-40}])
def test_choose_drops_the_last_masks_only_where_they_leave_nothing(options):
    gen = Generator(tiny_model(0), VOCAB)
    V = len(VOCAB)
    logits = torch.randn(3, V) * 3
    logits[2] = -1e4  # far below the top in every allowed column: the weights underflow
    logits[2, 0] = 50.0  # the top is a token no mask allows
    base = torch.zeros(V)
    base[4:20] = 1.0
    hard = torch.zeros(3, V)
    hard[:, 6:12] = 1.0
    soft = torch.ones(3, V)
    soft[0, 4:20] = 0.0  # row 0: the soft mask leaves nothing, so it is dropped (hard stays)
    soft[1, 6:11] = 0.0  # row 1: one token left by all three
    opts = SampleOptions(**options)
    for seed in range(20):
        choice, log_norm = gen.chooser.choose(logits.clone(), [base, hard, soft], opts, Streams.for_poems(seed, 0, 3))
        assert 6 <= int(choice[0]) < 12
        assert int(choice[1]) == 11
        assert 6 <= int(choice[2]) < 12 and int(choice[2]) != 0 and not bool(soft[2, choice[2]] == 0)
        assert torch.allclose(log_norm, torch.logsumexp(logits, -1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_each_title_leaves_the_state_its_own_text_gives(cell):
    gen = Generator(tiny_model(2, cell), VOCAB)
    titles, logits, state = gen._titles(SampleOptions(num=6, seed=3, temperature=1.5), Streams.for_poems(3, 0, 6), None)
    assert len({len(t) for t in titles}) > 1  # rows finished at different steps and left the batch
    for r, title in enumerate(titles):
        ids = torch.tensor([[VOCAB.bos_id, *VOCAB.encode(title), VOCAB.sep_id]])
        alone, _ = gen.stepper.prefill(ids)
        assert torch.allclose(logits[r], alone[0], atol=1e-5), title


@pytest.mark.parametrize("form", ["qijue", "wulv", None])
def test_streamed_characters_are_the_poems(form):
    """The characters on_char sees, row by row, are the bodies the decoders return."""
    gen = Generator(tiny_model(4), VOCAB)
    opts = SampleOptions(form=FORMS[form] if form else None, seed=7, num=3, best_of=1, temperature=1.2,
                         prompt=CHARS[3] + CHARS[4])
    streamed: dict[int, str] = {}

    def on_char(row: int, ch: str) -> None:
        streamed[row] = streamed.get(row, "") + ch

    poems = gen.generate(opts, on_char=on_char)
    assert [streamed[r] for r in range(3)] == [p.body for p in poems]
    assert [p.body for p in gen.generate(opts)] == [p.body for p in poems]  # streaming draws the same poems


@pytest.mark.parametrize("options", [dict(form=FORMS["qijue"], best_of=4), dict(form=None, best_of=2, max_chars=30),
                                     dict(form=FORMS["wujue"], best_of=1, acrostic="汉春风汉")])
def test_a_poem_is_the_same_whatever_is_drawn_beside_it(options):
    gen = Generator(tiny_model(4), VOCAB)
    five = gen.generate(SampleOptions(num=5, seed=11, **options))
    assert [p.body for p in gen.generate(SampleOptions(num=1, seed=11, **options))] == [five[0].body]
    assert [p.title for p in gen.generate(SampleOptions(num=3, seed=11, **options))] == [p.title for p in five[:3]]
    assert len({p.body for p in five}) > 1  # and the poems differ from each other


def test_poems_past_a_batch_are_those_of_a_longer_run(monkeypatch):
    import poetgen.sample as sample

    gen = Generator(tiny_model(4), VOCAB)
    opts = SampleOptions(num=7, seed=2, form=FORMS["wujue"], best_of=4)  # pruned as it goes
    whole = [p.body for p in gen.generate(opts)]
    monkeypatch.setattr(sample, "MAX_ROWS", 8)  # batches of 2 poems
    assert [p.body for p in gen.generate(opts)] == whole


@pytest.mark.parametrize("options", [dict(form=FORMS["qijue"], best_of=4), dict(form=None, best_of=2, max_chars=30)])
def test_on_progress_hears_the_poems_written_so_far(options, monkeypatch):
    import poetgen.sample.session as session

    monkeypatch.setattr(session, "MAX_ROWS", 8)  # batches of 2 poems (best of 4) or 4 (best of 2)
    heard: list[float] = []
    gen = Generator(tiny_model(4), VOCAB)
    poems = [p for b in gen.iter_generate(SampleOptions(num=5, seed=3, **options), on_progress=heard.append) for p in b]
    assert len(poems) == 5 and len(heard) > 5
    assert heard == sorted(heard) and 0 < heard[0] < 1 and heard[-1] <= 5
    if options["form"] is not None:
        assert heard[-1] == 5 and 2 in heard  # a fixed form's steps are known: each batch ends at its poems
