from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import ALPHABET
from typer.testing import CliRunner

from poetgen import checkpoint, config
from poetgen.cli import app
from poetgen.config import SampleRequest, VerseOptions, sample_request
from poetgen.errors import UsageError
from poetgen.forms import FORMS, STOPS, detect_form, split_lines
from poetgen.model import LanguageModel
from poetgen.sample import Generator, SampleOptions, Stepper, Streams, draw, filter_logits, prepare
from poetgen.vocab import SPECIALS, Vocab

runner = CliRunner()
CHARS = ALPHABET[:40] + list("汉春风")
VOCAB = Vocab([*SPECIALS, *CHARS, *"，。？！；：、"])


def tiny_model(seed: int, cell: str = "lstm", layers: int = 2) -> LanguageModel:
    return tiny.tiny_model(seed, VOCAB, cell=cell, layers=layers)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model(0), VOCAB, "simplified")


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
@given(model_seed=st.integers(0, 10_000), heads=st.text(alphabet=CHARS, min_size=1, max_size=6))
def test_free_form_acrostic_sets_the_lines(model_seed, heads):
    poems = Generator(tiny_model(model_seed), VOCAB).generate(SampleOptions(acrostic=heads, seed=1, num=2))
    for poem in poems:
        assert [line[0] for line in poem.lines] == list(heads)
        assert poem.body[-1] in STOPS


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


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, None, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_logits(logits, 2, None).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, None, 1.0).isfinite().all()


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


# --- the request ---------------------------------------------------------------------------------

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
    code = ("import sys; from poetgen.config import sample_request; from poetgen.errors import UsageError\n"
            "sample_request(form='wujue', strict=True, template='ze-rhymed', rhyme='东', prompt='春', seed=1)\n"
            "try: sample_request(strict=True)\nexcept UsageError: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False"], out.stderr


def test_a_request_is_checked_once_and_prepare_makes_new_options(ckpt, monkeypatch):
    calls = {"check_decoding": 0, "check_verse": 0, "check_text": 0}
    for name in calls:
        def counted(*args, _name=name, _check=getattr(config, name)):
            calls[_name] += 1
            return _check(*args)
        monkeypatch.setattr(config, name, counted)
    request = sample_request(prompt=CHARS[0], form="wujue", num=2, seed=3)
    loaded = checkpoint.load(ckpt)
    generator, opts, verse = prepare(loaded, request)
    generator.generate(opts, verse=verse)
    assert calls == {"check_decoding": 1, "check_verse": 1, "check_text": 1}
    assert opts == request.options and verse is not None  # rhymed, no 重字 by default
    converted = sample_request(prompt="漢", seed=3)  # traditional input, a simplified model
    _, converted_opts, verse = prepare(loaded, converted)
    assert (converted.options.prompt, converted_opts.prompt, verse) == ("漢", "汉", None)
    assert isinstance(converted, SampleRequest)


# --- CLI -----------------------------------------------------------------------------------------

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
        choice, log_norm = gen._choose(logits.clone(), [base, hard, soft], opts, Streams.for_poems(seed, 0, 3))
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


def test_cli_text_json_jsonl_and_output(ckpt, tmp_path):
    text = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--num", "3", "--seed", "5"])
    assert text.exit_code == 0, text.stderr
    poems = text.stdout.strip("\n").split("\n\n")
    assert len(poems) == 3 and all(len(p.split("\n")) == 5 for p in poems)  # the model's title, then 4 lines
    assert text.stderr == ""
    same = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--num", "3", "--seed", "5",
                               "--format", "jsonl"])
    titles = [json.loads(line)["title"] for line in same.stdout.splitlines()]
    assert [p.split("\n")[0] for p in poems] == [f"《{t}》" for t in titles]
    given = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--seed", "5", "--title", "汉"])
    assert given.stdout.strip().split("\n")[0] == "《汉》" and len(given.stdout.strip().split("\n")) == 5  # echoed
    js = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue", "--num", "2", "--seed", "5",
                             "--format", "json"])
    records = json.loads(js.stdout)
    assert len(records) == 2
    for r in records:
        assert {"text", "lines", "prompt", "seed", "temperature", "logprob", "form"} <= set(r)
        assert "".join(r["lines"]) == r["text"] and r["seed"] == 5
    jl = runner.invoke(app, ["sample", "-c", str(ckpt), "--num", "2", "--seed", "5", "--format", "jsonl"])
    assert [json.loads(line)["index"] for line in jl.stdout.splitlines()] == [0, 1]
    out = tmp_path / "poems.txt"
    written = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--num", "3", "--seed", "5",
                                  "--output", str(out)])
    assert written.exit_code == 0 and written.stdout == ""
    assert out.read_text(encoding="utf-8") == text.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["poems.txt"]  # no temp file left


def test_cli_same_seed_same_output_and_traditional_input(ckpt):
    a = runner.invoke(app, ["sample", "-c", str(ckpt), "--prompt", "漢", "--seed", "9"])
    b = runner.invoke(app, ["sample", "-c", str(ckpt), "--prompt", "汉", "--seed", "9"])
    assert a.exit_code == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.split("\n")[1].startswith("汉")


@pytest.mark.parametrize("args, needle", [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "3.4028235677973366e+38"], "--temperature"),  # overflows float32 to inf
    (["--seed", str(2**64)], "--seed"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--num", "0"], "--num"),
    (["--form", "sonnet"], "unknown form"),
    (["--form", "qijue", "--acrostic", "春风"], "4 lines"),
    (["--form", "wujue", "--prompt", "春风，"], "--prompt does not fit"),
    (["--form", "wujue", "--prompt", "春春春春春，春春春春春。" * 2 + "春"], "longer than the poem"),
    (["--form", "wujue", "--acrostic", "春风春风", "--prompt", "汉"], "acrostic head"),
    (["--prompt", "龘"], "not in the model's vocabulary: 龘"),
    (["--format", "xml"], "unknown format"),
])
def test_cli_bad_inputs(ckpt, args, needle):
    result = runner.invoke(app, ["sample", "-c", str(ckpt), *args])
    assert result.exit_code == 2, (args, result.stderr)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_sample_device_cpu_is_the_default_and_an_absent_gpu_is_refused(ckpt, monkeypatch):
    args = ["sample", "-c", str(ckpt), "--form", "wujue", "--num", "2", "--seed", "4"]
    plain = runner.invoke(app, args)
    on_cpu = runner.invoke(app, [*args, "--device", "cpu"])
    assert plain.exit_code == on_cpu.exit_code == 0 and plain.stdout == on_cpu.stdout
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr and result.stdout == ""
    result = runner.invoke(app, [*args, "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device" in result.stderr


def test_the_stepper_hands_back_cpu_float_logits_and_takes_cpu_ids():
    """What lets `sample --device cuda` keep its masks and random streams on the CPU: ids go to the
    model's device, logits come back as fp32 on the CPU (here both are the CPU, so this checks the contract)."""
    stepper = Stepper(tiny_model(3))
    logits, state = stepper.prefill(torch.tensor([[1, 5, 6]]))
    assert logits.device.type == "cpu" and logits.dtype == torch.float32 and stepper.device.type == "cpu"
    logits, state = stepper.step(torch.tensor([7]), stepper.select(state, torch.tensor([0])))
    assert logits.shape == (1, len(VOCAB)) and logits.dtype == torch.float32


def test_cli_missing_and_foreign_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    for path, needle in [(tmp_path / "none.pt", "no checkpoint"), (foreign, "not a poetgen checkpoint")]:
        result = runner.invoke(app, ["sample", "-c", str(path)])
        assert result.exit_code == 1 and needle in result.stderr and "Traceback" not in result.stderr


def test_piping_into_head_ends_quietly(ckpt):
    cmd = f"{sys.executable} -m poetgen sample -c {ckpt} --num 200 --form qilv --seed 1 | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1


def test_cli_best_of_and_no_rhyme(ckpt):
    from poetgen.sample import Generator

    loaded = checkpoint.load(ckpt)
    plain = Generator(loaded.model, loaded.vocab, loaded.meta.script).generate(
        SampleOptions(form=FORMS["qijue"], seed=4, num=2, best_of=3))
    result = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--seed", "4", "--num", "2",
                                 "--best-of", "3", "--no-rhyme", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == [p.body for p in plain]  # --no-rhyme: the plain model's poems
    assert all(r["best_of"] == 3 and r["score"] == pytest.approx(p.score, abs=1e-3)  # the CLI samples in int8
               for r, p in zip(records, plain, strict=True))
    bad = runner.invoke(app, ["sample", "-c", str(ckpt), "--best-of", "0"])
    assert bad.exit_code == 2 and "--best-of" in bad.stderr


def test_cli_no_prune_writes_the_best_of_all_candidates(ckpt):
    from poetgen.config import sample_request
    from poetgen.sample import prepare

    request = sample_request(form="qijue", seed=6, num=3, score="logprob", prune=False)
    generator, opts, verse = prepare(checkpoint.load(ckpt), request, int8=True)  # as the CLI does
    every = generator.candidates(opts, 8, verse=verse)
    best = [max(every[p * 8:(p + 1) * 8], key=lambda c: c.score).body for p in range(3)]

    def records(*extra):
        result = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--seed", "6", "--num", "3",
                                     "--score", "logprob", "--format", "jsonl", *extra])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    full, pruned = records("--no-prune"), records()
    assert [r["text"] for r in full] == best
    assert all(r["prune"] is False for r in full) and all(r["prune"] is True for r in pruned)
    assert all(r["prune"] is False for r in records("--best-of", "3"))  # under sample.PRUNE_MIN: nothing pruned
    assert all(r["text"] in {c.body for c in every[i * 8:(i + 1) * 8]} for i, r in enumerate(pruned))


def test_a_drawn_seed_is_shown_and_makes_the_poems_again(ckpt):
    drawn = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue"])
    assert drawn.exit_code == 0, drawn.output
    seed = drawn.stderr.split()[1]
    again = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue", "--seed", seed])
    assert again.stdout == drawn.stdout and again.stderr == ""  # a given seed is not echoed


@pytest.mark.parametrize("options", [dict(form=FORMS["qijue"], best_of=4), dict(form=None, best_of=2, max_chars=30),
                                     dict(form=FORMS["wujue"], best_of=1, acrostic="汉春风汉")])
def test_a_poem_is_the_same_whatever_is_drawn_beside_it(options):
    gen = Generator(tiny_model(4), VOCAB)
    five = gen.generate(SampleOptions(num=5, seed=11, **options))
    assert [p.body for p in gen.generate(SampleOptions(num=1, seed=11, **options))] == [five[0].body]
    assert [p.title for p in gen.generate(SampleOptions(num=3, seed=11, **options))] == [p.title for p in five[:3]]
    assert len({p.body for p in five}) > 1  # and the poems differ from each other


def test_through_the_cli_and_its_int8_path_a_poem_is_the_same_whatever_is_drawn_beside_it(tiny_checkpoint):
    """The default path (int8 on a CPU, the critic-free tiny model, best of 8): poem 0 of --num 1 is poem 0
    of --num 6 (48 candidate rows), record for record, score included."""
    def records(num):
        result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "qijue", "--num", str(num),
                                     "--seed", "8", "--format", "jsonl"])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    six = records(6)
    assert records(1) == six[:1] and records(3) == six[:3]


def test_poems_past_a_batch_are_those_of_a_longer_run(monkeypatch):
    import poetgen.sample as sample

    gen = Generator(tiny_model(4), VOCAB)
    opts = SampleOptions(num=7, seed=2, form=FORMS["wujue"], best_of=4)  # pruned as it goes
    whole = [p.body for p in gen.generate(opts)]
    monkeypatch.setattr(sample, "MAX_ROWS", 8)  # batches of 2 poems
    assert [p.body for p in gen.generate(opts)] == whole


@pytest.mark.parametrize("options", [dict(form=FORMS["qijue"], best_of=4), dict(form=None, best_of=2, max_chars=30)])
def test_on_progress_hears_the_poems_written_so_far(options, monkeypatch):
    import poetgen.sample as sample

    monkeypatch.setattr(sample, "MAX_ROWS", 8)  # batches of 2 poems (best of 4) or 4 (best of 2)
    heard: list[float] = []
    gen = Generator(tiny_model(4), VOCAB)
    poems = [p for b in gen.iter_generate(SampleOptions(num=5, seed=3, **options), on_progress=heard.append) for p in b]
    assert len(poems) == 5 and len(heard) > 5
    assert heard == sorted(heard) and 0 < heard[0] < 1 and heard[-1] <= 5
    if options["form"] is not None:
        assert heard[-1] == 5 and 2 in heard  # a fixed form's steps are known: each batch ends at its poems


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_in_a_terminal_sample_shows_the_load_and_a_moving_bar_and_stdout_keeps_the_poems(tiny_checkpoint, fmt,
                                                                                         tmp_path):
    """Through a pseudo-terminal on stderr (stdout a file, as in `poetgen sample … > poems.txt` typed
    in a terminal): a spinner while the model loads, then the bar to the end; and every poem on stdout
    (0.5 let the bar take them to the terminal)."""
    import os
    import selectors
    import time

    pytest.importorskip("pty")  # POSIX: where the terminal handling is tested
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items()  # nothing that tells rich or poetgen the terminal is not one
           if k not in ("NO_COLOR", "TERM", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_TERMINAL")}
    with open(tmp_path / "poems.out", "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "poetgen", "sample", "-c", str(tiny_checkpoint), "--form",
                                 "qijue", "--num", "20", "--seed", "1", "--format", fmt], stdout=stdout,
                                stderr=slave, env={**env, "TERM": "xterm"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 120
    with selectors.DefaultSelector() as sel:
        sel.register(master, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=1):
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
    proc.wait(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    out = (tmp_path / "poems.out").read_text()
    assert proc.returncode == 0
    assert "loading the model" in shown
    assert shown.index(" 0/20") < shown.index("20/20")
    poems = out.splitlines() if fmt == "jsonl" else out.split("\n\n")
    assert len(poems) == 20 and "《" not in shown and '"text"' not in shown  # all on stdout, none on the terminal


def test_the_bar_hears_each_character_and_each_batch(monkeypatch):
    """_write_batches: the bar from 0, each tick of the library (a share of a poem), each batch's end."""
    from poetgen.cli.commands import sample as command

    calls = []

    class Recorder:
        def __init__(self, quiet):
            pass

        def __enter__(self):
            return lambda stage, done, total: calls.append((done, total))

        def __exit__(self, *exc):
            return False

    def batches(tick):  # two batches of one poem each
        tick(0.7)
        yield ["poem 0"]
        tick(1.4)
        tick(2.0)  # the last character of the last batch: the batch's end says done
        yield ["poem 1"]

    monkeypatch.setattr(command, "StageProgress", Recorder)
    command._write_batches(batches, lambda batch, start: "", "text", None, Path("model.pt"), "drawing", 2, True)
    assert calls == [(0, 2), (0.7, 2), (1, 2), (1.4, 2), (pytest.approx(1.999), 2), (2, 2)]
