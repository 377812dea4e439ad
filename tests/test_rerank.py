"""The critic of best-of-N (poetgen/rerank.py): its figures, its place in the checkpoint, its ranking."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import tiny
import torch
from cli_helpers import runner

from poetgen import checkpoint
from poetgen.cli import app
from poetgen.critic_fit import auc, choose_weight, chosen_shares, fit, fit_usage, record_logprobs, usage_shares
from poetgen.errors import CheckpointError
from poetgen.forms import FORMS
from poetgen.rerank import Critic, CriticConfig, Reranker, critic_logits
from poetgen.sample import Generator, SampleOptions, Sampler, sample_request

VOCAB = tiny.VOCAB
FAVOURED = tiny.ALPHABET[3]


class Favouring(Critic):
    """A critic that reads a poem as real by how often it holds FAVOURED (a known ranking to test by)."""

    def forward(self, tokens, lengths):
        return 3.0 * (tokens == VOCAB.stoi[FAVOURED]).float().sum(1)


def favouring() -> Reranker:
    torch.manual_seed(0)
    return Reranker(Favouring(CriticConfig(vocab_size=len(VOCAB))), VOCAB, weight=1.0)


def test_auc_is_the_share_of_pairs_ranked_right():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 40).astype(float), rng.integers(0, 2, 40)
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert auc(scores, labels) == pytest.approx(expected)


def test_the_weight_is_the_one_that_ranks_real_poems_first():
    # the log-probability prefers the generated poems, the critic the real ones: the critic must weigh
    labels = np.array([1, 1, 1, 0, 0, 0] * 2)
    logprob = np.where(labels == 1, -4.0, -3.0)
    critic = np.where(labels == 1, 1.0, -1.0)
    groups = np.array(["a"] * 6 + ["b"] * 6)
    weight, table = choose_weight(logprob, critic, labels, groups)
    assert table["0.0"] == 0.0 and table[str(weight)] == 1.0
    assert weight == 0.75  # the smallest weight of the grid with 2w > 1, where every real poem ranks first


def test_a_critic_learns_what_tells_the_classes_apart():
    real = ["".join(tiny.ALPHABET[i % 20] for i in range(k, k + 10)) for k in range(60)]
    fake = [body[:4] + body[4] * 2 + body[6:] for body in real]  # an odd doubled character in each
    train = (real[:50] + fake[:50], [1] * 50 + [0] * 50)
    val = (real[50:] + fake[50:], [1] * 10 + [0] * 10)
    critic, figures = fit(VOCAB, train, val, epochs=8, batch=16, lr=5e-3)
    assert figures["val_auc"] > 0.9
    assert 1 <= figures["epoch"] <= 8 and len(figures["history"]) == 8


def test_record_logprobs_are_what_the_sampler_ranks_by(tiny_model):
    opts = SampleOptions(form=FORMS["wujue"], num=3, seed=5, best_of=1)
    poems = Generator(tiny_model, VOCAB).generate(opts)
    measured = record_logprobs(tiny_model, VOCAB, [(p.title, p.body) for p in poems])
    assert measured == pytest.approx([p.score for p in poems], abs=1e-4)


def test_the_payload_round_trips_and_bad_ones_are_refused():
    torch.manual_seed(1)
    critic = Critic(CriticConfig(vocab_size=len(VOCAB), dim=8, channels=8, hidden=8))
    payload = Reranker(critic, VOCAB, 0.5).to_payload()
    bodies = ["甲乙丙丁，戊己庚辛。", "甲甲甲甲，甲甲甲甲。"]
    again = Reranker.from_payload(payload, VOCAB)
    assert again.weight == 0.5
    assert critic_logits(again.critic, VOCAB, bodies) == pytest.approx(critic_logits(critic, VOCAB, bodies), abs=1e-2)
    for bad in ({**payload, "weight": float("nan")}, {**payload, "kind": "other"},
                {**payload, "config": {**payload["config"], "vocab_size": 5}},
                {**payload, "state_dict": {k: v * float("inf") for k, v in payload["state_dict"].items()}}):
        with pytest.raises(ValueError):
            Reranker.from_payload(bad, VOCAB)


def test_usage_payload_round_trips_and_malformed_tables_are_refused():
    torch.manual_seed(1)
    critic = Critic(CriticConfig(vocab_size=len(VOCAB), dim=8, channels=8, hidden=8))
    payload = Reranker(critic, VOCAB, 0.5, usage={"wujue": {"甲": 1.5, "乙": -0.25}}).to_payload()
    assert Reranker.from_payload(payload, VOCAB).usage == {"wujue": {"甲": 1.5, "乙": -0.25}}
    assert "usage" not in Reranker(critic, VOCAB, 0.5).to_payload()  # files without one stay as they were
    for bad in ({"wujue": {"甲": float("inf")}}, {"wujue": {"甲乙": 1.0}}, {"wujue": {"甲": True}}, {"wujue": [1.0]},
                ["甲"], {"zz": {"甲": 1.0}}, {"wujue": {"甲": 1e300}}):
        with pytest.raises(ValueError, match="usage"):
            Reranker.from_payload({**payload, "usage": bad}, VOCAB)


def test_usage_weighs_each_character_held_once_in_its_form_only():
    torch.manual_seed(1)
    critic = Critic(CriticConfig(vocab_size=len(VOCAB), dim=8, channels=8, hidden=8))
    plain = Reranker(critic, VOCAB, 0.5)
    used = Reranker(critic, VOCAB, 0.5, usage={"wujue": {"甲": 2.0, "乙": -0.5}})
    bodies, lp = ["甲甲丙丁，戊己庚辛。", "乙丙丁戊，己庚辛壬。", "丙丁戊己，庚辛壬癸。"], [-3.0, -2.0, -1.0]
    base = plain.scores(bodies, lp)
    assert used.scores(bodies, lp, "wujue") == pytest.approx([base[0] + 2.0, base[1] - 0.5, base[2]])
    assert used.scores(bodies, lp, "qijue") == pytest.approx(base) and used.scores(bodies, lp) == pytest.approx(base)


def test_fit_usage_brings_the_picked_shares_to_the_real_ones():
    rng = np.random.default_rng(0)
    pools = []
    for _ in range(600):  # four candidates; the first holds 甲 and scores higher, so 甲 is picked too often
        bodies = ["甲乙丙丁", "乙丙丁戊", "丙丁戊己", "丁戊己庚"]
        pools.append((bodies, list(rng.normal(size=4) + np.array([1.5, 0.0, 0.0, 0.0]))))
    real = {"甲": 0.25, "乙": 0.5, "丙": 0.75, "丁": 1.0, "戊": 0.75, "己": 0.5, "庚": 0.02}
    before = chosen_shares(pools, {})
    assert before["甲"] > 0.5
    weights = fit_usage(pools, real)
    after = chosen_shares(pools, weights)
    assert "庚" not in weights  # under USAGE_MIN_SHARE: no weight
    assert weights["甲"] < 0 and abs(after["甲"] - 0.25) < 0.05
    assert sum(abs(after[c] - real[c]) for c in "甲乙丙戊己") < sum(abs(before[c] - real[c]) for c in "甲乙丙戊己")
    assert usage_shares(["甲甲乙，", "乙丙。"]) == {"甲": 0.5, "乙": 1.0, "丙": 0.5}
    assert fit_usage([([], [])] + pools, real) == weights  # an empty pool is left out
    with pytest.raises(ValueError, match="one score per candidate"):
        fit_usage([(["甲乙"], [0.0, 1.0])], real)


def test_best_of_n_adds_the_usage_of_the_form(tiny_model):
    opts = SampleOptions(form=FORMS["wujue"], num=6, seed=3, best_of=8, search="poem", prune=False)
    other = tiny.ALPHABET[5]
    reranker = Reranker(favouring().critic, VOCAB, 1.0, usage={"wujue": {other: 40.0}})
    ranked = Generator(tiny_model, VOCAB, reranker=reranker)
    candidates = Generator(tiny_model, VOCAB).candidates(opts, 8)
    expected = [max(candidates[p * 8:(p + 1) * 8],
                    key=lambda c: c.score + 3.0 * c.body.count(FAVOURED) + 40.0 * (other in c.body)).body
                for p in range(opts.num)]
    chosen = [poem.body for poem in ranked.generate(opts)]
    assert chosen == expected
    assert chosen != [poem.body for poem in Generator(tiny_model, VOCAB, reranker=favouring()).generate(opts)]


def test_best_of_n_keeps_the_candidate_of_best_combined_score(tiny_model):
    opts = SampleOptions(form=FORMS["wujue"], num=6, seed=3, best_of=8, search="poem", prune=False)
    plain = Generator(tiny_model, VOCAB)
    ranked = Generator(tiny_model, VOCAB, reranker=favouring())
    candidates = plain.candidates(opts, 8)
    expected = []
    for p in range(opts.num):
        group = candidates[p * 8:(p + 1) * 8]
        expected.append(max(group, key=lambda c: c.score + 3.0 * c.body.count(FAVOURED)).body)
    chosen = [poem.body for poem in ranked.generate(opts)]
    assert chosen == expected
    assert chosen != [poem.body for poem in plain.generate(opts)]  # the critic changed some choices


def test_pruning_ranks_what_is_written_so_far_with_the_critic_and_usage(tiny_model):
    """The cuts of best-of-N (6, 4, 3 of 8) rank partial poems by the same score as the pick: mean
    log-probability so far plus the critic and the form's usage terms on the lines written."""
    from poetgen.sample import CUTS

    other = tiny.ALPHABET[5]
    reranker = Reranker(favouring().critic, VOCAB, 1.0, usage={"wujue": {other: 2.0}})
    opts = SampleOptions(form=FORMS["wujue"], num=6, seed=3, best_of=8, temperature=1.5, search="poem")
    ranked = Generator(tiny_model, VOCAB, reranker=reranker)
    full, pruned = ranked.candidates(opts, 8), ranked.candidates(opts, 8, cuts=CUTS)

    def so_far(c, chars):
        written = c.body[:chars]
        return (tiny.prefix_score(tiny_model, VOCAB, c.title, c.body, chars) + 3.0 * written.count(FAVOURED)
                + 2.0 * (other in written))

    cuts, by_score, by_logprob_alone = [(1, 6), (2, 4), (3, 3)], [], []
    for p in range(opts.num):
        group = full[p * 8:(p + 1) * 8]
        by_score.append(tiny.survivors_by_hand(lambda r, n, group=group: so_far(group[r], 6 * n), 8, cuts))
        assert [c.body for c in pruned[p * 3:(p + 1) * 3]] == [group[r].body for r in by_score[-1]]
        by_logprob_alone.append(tiny.survivors_by_hand(
            lambda r, n, group=group: tiny.prefix_score(tiny_model, VOCAB, group[r].title, group[r].body, 6 * n),
            8, cuts))
    assert by_score != by_logprob_alone  # the critic and usage decided some cuts


def test_the_critic_travels_in_the_checkpoint_and_score_logprob_ignores_it(tiny_checkpoint, tmp_path):
    torch.manual_seed(2)
    critic = Critic(CriticConfig(vocab_size=len(VOCAB), dim=8, channels=8, hidden=8))
    with_critic = checkpoint.attach_critic(tiny_checkpoint, tmp_path / "ranked.pt",
                                           Reranker(critic, VOCAB, 5.0).to_payload())
    reranker = with_critic.reranker()
    assert reranker is not None and reranker.weight == 5.0 and checkpoint.read(tiny_checkpoint).reranker() is None

    def records(path, *extra):
        result = runner.invoke(app, ["sample", "--form", "wujue", "--num", "6", "--seed", "2", "--format", "jsonl",
                                     "-c", str(path), *extra])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    plain = records(tiny_checkpoint)
    assert records(tmp_path / "ranked.pt", "--score", "logprob") == [{**r, "checkpoint": str(tmp_path / "ranked.pt")}
                                                                     for r in plain]
    ranked = records(tmp_path / "ranked.pt")
    assert [r["text"] for r in ranked] != [r["text"] for r in plain]
    for r in ranked:  # each score is the mean log-probability plus the weighed critic
        expected = reranker.scores([r["text"]], [r["logprob"] / (len(r["text"]) + 1)])[0]
        assert r["score"] == pytest.approx(expected, abs=1e-3)
    sampler = Sampler(checkpoint.load(tmp_path / "ranked.pt"), sample_request(form="free"))
    assert sampler.generator.reranker is None  # free form: the critic knows the regulated forms only


def test_info_names_the_usage_tables(tiny_checkpoint, tmp_path):
    usage = {"wujue": {"甲": 1.0, "乙": -1.0}, "qilv": {}}
    payload = Reranker(favouring().critic, VOCAB, 1.0, usage=usage).to_payload()
    checkpoint.attach_critic(tiny_checkpoint, tmp_path / "used.pt", payload)
    result = runner.invoke(app, ["info", "-c", str(tmp_path / "used.pt")])
    assert result.exit_code == 0, result.output
    critic_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("critic:"))
    assert critic_line.endswith("usage weights for 五绝 2 characters")  # an empty table is not shown
    plain = runner.invoke(app, ["info", "-c", str(tiny_checkpoint)])
    assert "usage" not in plain.stdout


def test_a_damaged_critic_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["rerank"] = {**favouring().to_payload(), "weight": -1.0}
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="critic weight"):
        checkpoint.read(tmp_path / "bad.pt")
    result = runner.invoke(app, ["sample", "--form", "wujue", "-c", str(tmp_path / "bad.pt")])
    assert result.exit_code != 0 and "damaged" in result.stderr and "Traceback" not in result.output


def test_non_finite_weights_are_refused_on_load(tiny_checkpoint, tmp_path):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    name = next(iter(raw["state_dict"]))
    raw["state_dict"][name] = raw["state_dict"][name] * float("nan")
    torch.save(raw, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="not finite"):
        checkpoint.read(tmp_path / "nan.pt")


def test_unknown_score_is_refused():
    result = runner.invoke(app, ["sample", "--form", "wujue", "--score", "judge"])
    assert result.exit_code == 2 and "choose one of critic, logprob" in result.stderr


def test_meaning_negatives_break_one_line_or_the_order_and_keep_the_form():
    """tools/meaning_negatives.py: a swap changes one line (never the first) for another poem's line at
    the same place; a shuffle keeps the lines in another order; both keep the form's marks."""
    import importlib.util
    import random
    from pathlib import Path

    from poetgen.forms import detect, split_lines

    path = Path(__file__).parent.parent / "tools" / "meaning_negatives.py"
    spec = importlib.util.spec_from_file_location("meaning_negatives", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = random.Random(0)
    chars = [chr(0x4E00 + 7 * k) for k in range(200)]
    poems = []
    for n in range(20):
        lines = ["".join(rng.choice(chars) for _ in range(7)) for _ in range(4)]
        poems.append(("qijue", f"t{n}", tool._punctuated(lines)))
    rows = tool.negatives(poems, random.Random(1))
    real = {title: [line[:-1] for line in split_lines(body)] for _, title, body in poems}
    assert {r["kind"] for r in rows} == {"swap", "shuffle"}
    for row in rows:
        lines = [line[:-1] for line in split_lines(row["text"])]
        original = real[row["title"]]
        assert detect(row["text"]).key == "qijue" and lines != original
        if row["kind"] == "swap":
            changed = [i for i in range(4) if lines[i] != original[i]]
            assert len(changed) == 1 and changed[0] > 0
        else:
            assert sorted(lines) == sorted(original)


def test_resampled_copies_each_poems_better_half_best_first():
    """Line search: of each poem's rows, the better half by score so far (log-probability per character,
    the end counted as one), each copied into two rows, the best first; ties go to the earlier row."""
    from poetgen.sample.rank import resampled

    chars = [i for i, t in enumerate(VOCAB.tokens) if len(t) == 1][:4]
    columns = [torch.tensor(chars + chars[:2]), torch.tensor(chars[:1] * 6)]  # two characters written a row
    logprob = torch.tensor([-3.0, -1.0, -2.0, -1.5, -0.5, -0.5], dtype=torch.float64)
    assert resampled(VOCAB, None, columns, logprob, 6, "wujue").tolist() == [4, 5, 1, 4, 5, 1]
    assert resampled(VOCAB, None, columns, logprob, 3, "wujue").tolist() == [1, 1, 1, 4, 4, 4]
    assert resampled(VOCAB, None, columns, logprob, 2, "wujue").tolist() == [1, 1, 3, 3, 4, 4]
