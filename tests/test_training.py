"""Training (poetgen.train's Trainer and `poetgen train`): learning beyond a unigram baseline, exact
resumption after a stop, warm starts from another checkpoint, bf16, the sampled softmax, patience, and
the train command's refusals and its run through to `poetgen eval`."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from cli_helpers import SMALL_TRAIN_ARGS, runner
from tiny import SMALL, as_records

from poetgen import checkpoint, corpus
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.corpus import load_split
from poetgen.data import get_batch
from poetgen.errors import CheckpointError, UsageError
from poetgen.evaluate import evaluate_stream
from poetgen.model import LanguageModel, ModelConfig
from poetgen.train import TrainConfig, Trainer, TrainingInterrupted
from poetgen.vocab import SPECIALS, Vocab


def streams(prepared):
    return load_split(prepared, "train"), load_split(prepared, "val")


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray) -> float:
    counts = Counter(train.tolist())
    total = sum(counts.values())
    vocab = len(set(train.tolist()) | set(val.tolist()))
    return -sum(math.log((counts[t] + 1) / (total + vocab)) for t in val.tolist()) / len(val)


def test_tiny_training_beats_the_unigram_baseline(prepared, tmp_path):
    train, val = streams(prepared)
    vocab = Vocab.load(prepared / "vocab.json")
    cfg = TrainConfig(batch_size=16, bptt=32, epochs=30, max_steps=240, lr=1e-2, warmup_steps=20, eval_every=80,
                      device="cpu", log_every=20)
    trainer = Trainer(ModelConfig(len(vocab), emb_size=32, hidden_size=64, num_layers=1, dropout=0.0,
                                 emb_dropout=0.0), cfg, vocab, train, val, tmp_path)
    summary = trainer.run()
    baseline = unigram_cross_entropy(train, val[1:])
    assert summary["best_val_loss"] < 0.75 * baseline, (summary["best_val_loss"], baseline)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert len(evals) == 3
    for e in evals:
        assert {"step", "train_loss", "val_loss", "val_ppl", "tokens_per_s"} <= set(e)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    best = checkpoint.load(tmp_path / "best.pt")
    assert best.vocab.tokens == vocab.tokens and best.meta.best_val_loss == pytest.approx(summary["best_val_loss"])


def _trainer(prepared, out, **overrides):
    train, val = streams(prepared)
    vocab = Vocab.load(prepared / "vocab.json")
    cfg = TrainConfig(**{**dict(batch_size=8, bptt=16, max_steps=30, eval_every=10, warmup_steps=5, device="cpu",
                                seed=7, log_every=5), **overrides})
    return Trainer(ModelConfig(len(vocab), **SMALL), cfg, vocab, train, val, out)


def test_resume_continues_exactly(prepared, tmp_path):
    straight = _trainer(prepared, tmp_path / "a")
    a = straight.run()

    def interrupt(trainer):
        if trainer.position.step == 15:
            raise KeyboardInterrupt

    first = _trainer(prepared, tmp_path / "b")
    with pytest.raises(TrainingInterrupted, match="--resume"):
        first.run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b")
    second.resume(tmp_path / "b" / "last.pt")
    assert second.position.step == 15
    b = second.run()
    assert b["steps"] == a["steps"] == 30
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]
    for (k, va), (_, vb) in zip(straight.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_a_stop_signal_during_validation_cuts_it_short_and_the_resumed_run_validates_again(prepared, tmp_path):
    straight = _trainer(prepared, tmp_path / "a")
    a = straight.run()
    windows_seen = []

    def signal_at_second_validation(event):
        if event["event"] == "evaluating" and event["step"] == 20:
            interrupted._stop.signal_name = "SIGTERM"  # what the SIGTERM handler does

    interrupted = _trainer(prepared, tmp_path / "b")
    interrupted.listeners.append(as_records(signal_at_second_validation))
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 20"):
        interrupted.run()
    assert interrupted.position.evaluated_step == 10
    resumed = _trainer(prepared, tmp_path / "b")
    resumed.listeners.append(as_records(lambda e: windows_seen.append(e["step"]) if e["event"] == "eval" else None))
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.position.step == 20 and resumed.position.evaluated_step == 10
    b = resumed.run()
    assert windows_seen == [20, 30]  # step 20 validated again before training goes on
    assert b["best_val_loss"] == a["best_val_loss"]
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]
    evals = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["event"] == "eval"] == [10, 20, 30]
    assert all(e["train_loss"] is not None and e["tokens_per_s"] > 0 for e in evals if e["event"] == "eval")
    # the pending validation is kept in last.pt, so it is redone even when --resume changes --eval-every
    again = _trainer(prepared, tmp_path / "c")
    again.listeners.append(as_records(lambda e: (setattr(again._stop, "signal_name", "SIGTERM")
                                                 if e["event"] == "evaluating" and e["step"] == 20 else None)))
    with pytest.raises(TrainingInterrupted):
        again.run()
    steps = []
    other = _trainer(prepared, tmp_path / "c", eval_every=7)
    other.listeners.append(as_records(lambda e: steps.append(e["step"]) if e["event"] == "eval" else None))
    other.resume(tmp_path / "c" / "last.pt")
    other.run()
    assert steps == [20, 21, 28, 30]


def test_the_resumed_log_reports_what_the_uninterrupted_one_does(prepared, tmp_path):
    straight = _trainer(prepared, tmp_path / "a")
    straight.run()

    def interrupt(trainer):
        if trainer.position.step == 13:  # between two log lines (every 5 steps): three steps' loss not yet reported
            raise KeyboardInterrupt

    first = _trainer(prepared, tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        first.run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b")
    second.resume(tmp_path / "b" / "last.pt")
    second.run()

    def logs(folder):
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {e["step"]: e["train_loss"] for e in lines if e["event"] == "log"}

    a, b = logs(tmp_path / "a"), logs(tmp_path / "b")
    assert sorted(a) == sorted(b) == [5, 10, 15, 20, 25, 30]
    assert a == b  # step 15's line too: its five steps straddle the stop


def test_warm_start_takes_the_weights_but_not_the_schedule(prepared, tmp_path):
    first = _trainer(prepared, tmp_path / "a")
    first.run()
    best = tmp_path / "a" / "best.pt"
    loaded = checkpoint.load(best)
    model, best_val_loss = loaded.model, loaded.meta.best_val_loss
    warm = _trainer(prepared, tmp_path / "b", init_from=str(best), lr=3e-4)
    assert warm.position.step == 0 and math.isinf(warm.position.best_val)
    for (k, va), (_, vb) in zip(model.state_dict().items(), warm.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    assert warm.validate()["record"]["nats_per_char"] == pytest.approx(best_val_loss, abs=1e-6)
    assert warm.lr_at(0, 0.0) < warm.lr_at(5, 0.0) == pytest.approx(warm.cfg.peak_lr)  # a fresh warmup
    summary = warm.run()
    assert summary["steps"] == 30 and summary["best_val_loss"] <= best_val_loss + 0.01
    cold = _trainer(prepared, tmp_path / "c")
    assert not torch.equal(cold.model.embed.weight, warm.model.embed.weight)


def test_warm_start_refuses_another_shape_or_vocabulary(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    other = LanguageModel(ModelConfig(len(vocab), **{**SMALL, "hidden_size": 48}))
    checkpoint.save(tmp_path / "shape.pt", other, vocab, ModelMeta())
    with pytest.raises(UsageError, match="another model shape"):
        _trainer(prepared, tmp_path / "r", init_from=str(tmp_path / "shape.pt"))
    traditional = LanguageModel(ModelConfig(len(vocab) + 1, **SMALL))
    checkpoint.save(tmp_path / "trad.pt", traditional, Vocab(vocab.tokens + ["龘"]), ModelMeta(script="traditional"))
    train, val = streams(prepared)
    with pytest.raises(UsageError, match="traditional text and this corpus is simplified"):
        Trainer(ModelConfig(len(vocab), **SMALL), TrainConfig(batch_size=8, bptt=16,
                                                              init_from=str(tmp_path / "trad.pt")),
                vocab, train, val, tmp_path / "r", corpus_meta={"script": "simplified"})
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--quiet",
                                 "--init-from", str(tmp_path / "shape.pt"), "--hidden-size", "64"])
    assert result.exit_code == 2 and "--init-from takes the model's shape" in result.stderr
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--quiet",
                                 "--init-from", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "--init-from" in result.stderr and "no such file" in result.stderr
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--quiet",
                                 "--init-from", str(tmp_path)])
    assert result.exit_code == 2 and f"--init-from {tmp_path} is a folder" in result.stderr
    # the CLI takes the checkpoint's shape and may change the dropout
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "ok"), "--data-dir", str(prepared), "--quiet",
                                 "--init-from", str(tmp_path / "shape.pt"), "--dropout", "0.4", "--max-steps", "2",
                                 "--batch-size", "8", "--bptt", "16", "--eval-every", "2"])
    assert result.exit_code == 0, result.stderr
    config = checkpoint.read(tmp_path / "ok" / "last.pt").config
    assert config.hidden_size == 48 and config.dropout == 0.4


def test_warm_start_from_another_vocabulary_carries_the_shared_rows(prepared, tmp_path):
    """A model of an older corpus build (other characters, another order, another size) lends the rows
    of the tokens both vocabularies hold; the others start from the mean of the carried rows."""
    vocab = Vocab.load(prepared / "vocab.json")
    chars = vocab.tokens[len(SPECIALS):]
    old_tokens = [*SPECIALS, "龘", *reversed(chars[3:]), "鼺", "齉"]  # drops 3 tokens, adds 3, reorders
    old = LanguageModel(ModelConfig(len(old_tokens), **{**SMALL, "tie_weights": False}))
    checkpoint.save(tmp_path / "old.pt", old, Vocab(old_tokens), ModelMeta())
    events = []
    train, val = streams(prepared)
    cfg = dict(batch_size=8, bptt=16, seed=7)
    config = ModelConfig(len(vocab), **{**SMALL, "tie_weights": False})
    warm = Trainer(config, TrainConfig(**cfg, init_from=str(tmp_path / "old.pt")), vocab, train, val,
                   tmp_path / "w", listeners=[as_records(events.append)])
    position = {t: i for i, t in enumerate(old_tokens)}
    carried = [position[t] for t in vocab.tokens if t in position]
    for name in ("embed.weight", "head.weight", "head.bias"):
        new_rows, old_rows = warm.model.state_dict()[name], old.state_dict()[name]
        mean = old_rows[carried].mean(0)
        for i, token in enumerate(vocab.tokens):
            if token in position:
                assert torch.equal(new_rows[i], old_rows[position[token]]), (name, token)
            else:
                assert torch.allclose(new_rows[i], mean), (name, token)
    assert torch.equal(warm.model.state_dict()["rnn.weight_hh_l0"], old.state_dict()["rnn.weight_hh_l0"])
    assert any(e["event"] == "note" and f"{len(vocab) - 3:,} of {len(vocab):,} tokens" in e["message"] for e in events)


def test_bf16_on_cpu_trains_and_matches_fp32_evaluation(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path / "bf16", precision="bf16")
    summary = trainer.run()
    assert math.isfinite(summary["best_val_loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    _, val = streams(prepared)
    nats = {}
    for precision in ("fp32", "bf16"):
        nats[precision] = evaluate_stream(trainer.model, val, trainer.vocab, precision=precision)["record"][
            "nats_per_char"]
    assert nats["bf16"] == pytest.approx(nats["fp32"], abs=0.05)
    assert nats["bf16"] != nats["fp32"]  # it did run in bf16
    with pytest.raises(UsageError, match="unknown precision"):
        TrainConfig(precision="fp8").validate()


@pytest.mark.slow  # two trainings of 120 steps
def test_training_with_a_sampled_softmax_learns_about_as_well_as_the_full_softmax(prepared, tmp_path):
    sampled = _trainer(prepared, tmp_path / "s", sampled_softmax=8, max_steps=120, eval_every=120)
    before = sampled.validate()["record"]["nats_per_char"]
    learned = sampled.run()["best_val_loss"]
    full = _trainer(prepared, tmp_path / "f", max_steps=120, eval_every=120).run()["best_val_loss"]
    assert learned < before - 0.05 and abs(learned - full) < 0.05 and learned != full


def test_training_with_a_sampled_softmax_resumes_exactly(prepared, tmp_path):
    def interrupt(trainer):
        if trainer.position.step == 15:
            raise KeyboardInterrupt

    a = _trainer(prepared, tmp_path / "a", sampled_softmax=8).run()
    with pytest.raises(TrainingInterrupted):
        _trainer(prepared, tmp_path / "b", sampled_softmax=8).run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b", sampled_softmax=8)
    second.resume(tmp_path / "b" / "last.pt")
    b = second.run()
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]


def _teacher(prepared, tmp_path) -> str:
    """A model trained on the prepared corpus a while: the teacher of the distillation tests."""
    _trainer(prepared, tmp_path / "teacher", max_steps=120, eval_every=120, lr=1e-2).run()
    return str(tmp_path / "teacher" / "best.pt")


def _kl_on_val(prepared, teacher: torch.nn.Module, student: torch.nn.Module) -> float:
    """Mean KL(teacher ‖ student) per character over the first 2,000 characters of val."""
    val = torch.as_tensor(load_split(prepared, "val")[:2000].astype(np.int64))[None]
    with torch.no_grad():
        t = torch.log_softmax(teacher.eval()(val)[0], -1)
        s = torch.log_softmax(student.eval()(val)[0], -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_a_distilled_student_comes_closer_to_its_teacher_than_one_trained_on_the_text(prepared, tmp_path):
    teacher_path = _teacher(prepared, tmp_path)
    teacher = checkpoint.load(teacher_path).model
    plain = _trainer(prepared, tmp_path / "plain", max_steps=60, eval_every=60, lr=1e-2)
    plain.run()
    taught = _trainer(prepared, tmp_path / "taught", max_steps=60, eval_every=60, lr=1e-2, teacher=teacher_path,
                      distill=0.9)
    start = _kl_on_val(prepared, teacher, taught.model)
    taught.run()
    assert not taught.teacher.training and not any(p.requires_grad for p in taught.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(taught.teacher.state_dict().values(),
                                                 teacher.state_dict().values(), strict=True))  # never trained
    kl_taught, kl_plain = _kl_on_val(prepared, teacher, taught.model), _kl_on_val(prepared, teacher, plain.model)
    assert kl_taught < 0.5 * start and kl_taught < 0.8 * kl_plain, (start, kl_taught, kl_plain)
    logged = [json.loads(line) for line in (tmp_path / "taught" / "metrics.jsonl").read_text().splitlines()]
    last_log = [e for e in logged if e["event"] == "log"][-1]
    assert last_log["train_loss"] > kl_taught  # the cross entropy of the text, not the objective
    assert checkpoint.load(tmp_path / "taught" / "best.pt").meta.train_config["teacher"] == teacher_path


def test_the_objective_mixes_the_cross_entropy_and_kl_from_the_teacher_and_the_log_keeps_the_first(
        prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path / "s", teacher=_teacher(prepared, tmp_path), distill=0.3)
    trainer.model.eval()  # no dropout: the figures below are exact
    x, y = get_batch(trainer.train_data, 0, trainer.cfg.bptt)
    with torch.no_grad():
        teacher_logp = torch.log_softmax(trainer.teacher(x)[0].float(), -1)
        logq = torch.log_softmax(trainer.model(x)[0].float(), -1)
        ce = float(-logq.gather(-1, y[..., None]).mean())
        kl = float((teacher_logp.exp() * (teacher_logp - logq)).sum(-1).mean())  # KL(teacher ‖ student)
        got_ce, objective, _, _ = trainer._distillation_loss(x, y)
    assert float(got_ce) == pytest.approx(ce, rel=1e-5) and kl > 0.01
    assert float(objective) == pytest.approx(0.7 * ce + 0.3 * kl, rel=1e-5)
    assert trainer._train_step(1e-3)[0] == pytest.approx(ce, rel=1e-5)  # what the log reports: the cross entropy


def test_the_teachers_state_starts_afresh_at_each_epoch_like_the_students(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path / "e", teacher=_teacher(prepared, tmp_path), batch_size=64, bptt=32,
                       max_steps=None, epochs=2, eval_every=1000)
    fresh = []
    trainer.teacher.register_forward_pre_hook(lambda module, args: fresh.append(args[1] is None))
    trainer.run()
    windows = trainer.windows_per_epoch
    assert len(fresh) == 2 * windows and [i for i, f in enumerate(fresh) if f] == [0, windows]


def test_distillation_resumes_exactly_the_teachers_state_carried_in_last_pt(prepared, tmp_path):
    teacher = _teacher(prepared, tmp_path)

    def interrupt(trainer):
        if trainer.position.step == 15:
            raise KeyboardInterrupt

    straight = _trainer(prepared, tmp_path / "a", teacher=teacher)
    a = straight.run()
    with pytest.raises(TrainingInterrupted):
        _trainer(prepared, tmp_path / "b", teacher=teacher).run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b", teacher=teacher)
    second.resume(tmp_path / "b" / "last.pt")
    assert second.position.teacher_hidden is not None and 0 < second.position.window
    b = second.run()
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]
    for (k, va), (_, vb) in zip(straight.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def _scripted_trainer(prepared, out, losses, **overrides):
    """A tiny run whose validations report the next of `losses` (nats per character) each."""
    train, val = streams(prepared)
    vocab = Vocab.load(prepared / "vocab.json")
    cfg = TrainConfig(**{**dict(batch_size=8, bptt=8, max_steps=30, eval_every=1, device="cpu"), **overrides})
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=16, num_layers=1), cfg, vocab, train, val, out)
    figures = iter(losses)

    def validate():
        nats = next(figures)
        return {"record": {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "perplexity": math.exp(nats)},
                "body": {"perplexity": math.exp(nats)}}

    trainer.validate = validate
    return trainer


def test_patience_stops_after_that_many_validations_without_improvement(prepared, tmp_path):
    """--patience N stops the run at the N-th validation in a row that does not beat the best (an equal
    figure does not), and a resumed run goes on counting from last.pt."""
    summary = _scripted_trainer(prepared, tmp_path / "a", [3.0, 2.5, 2.6, 2.5, 2.4], patience=2).run()
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == 4 and summary["best_val_loss"] == 2.5
    evals = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
             if '"event": "eval"' in line]
    assert [(e["step"], e["best"]) for e in evals] == [(1, True), (2, True), (3, False), (4, False)]
    assert checkpoint.read(tmp_path / "a" / "best.pt").meta.step == 2
    assert checkpoint.read(tmp_path / "a" / "last.pt").train_state["evals_since_best"] == 2
    # stopped after the first validation without improvement, the resumed run stops at the second
    first = _scripted_trainer(prepared, tmp_path / "b", [3.0, 2.5, 2.6], patience=2)

    def interrupt(trainer):
        if trainer.position.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        first.run(on_step=interrupt)
    resumed = _scripted_trainer(prepared, tmp_path / "b", [2.7, 1.0], patience=2)
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.run()["steps"] == 4


def test_a_run_reads_its_checkpoint_and_corpus_manifest_once(prepared, tmp_path, monkeypatch):
    from poetgen.corpus import load_train
    from poetgen.train import plan_run

    _scripted_trainer(prepared, tmp_path / "a", [3.0, 2.9], max_steps=2).run()
    vocab = Vocab.load(prepared / "vocab.json")
    reads, manifests = [], []
    real_read, real_meta = checkpoint.read, corpus.load_meta
    monkeypatch.setattr(checkpoint, "read", lambda path: (reads.append(path), real_read(path))[1])
    monkeypatch.setattr(corpus, "load_meta", lambda root: (manifests.append(root), real_meta(root))[1])
    meta = corpus.load_meta(prepared)
    train, val = load_train(prepared, "train", meta=meta), load_split(prepared, "val", meta=meta)
    assert len(manifests) == 1
    plan = plan_run(tmp_path / "a", vocab, {"max_steps": 3}, resume=True)
    resumed = Trainer(plan.model_config, plan.train_config, vocab, train, val, tmp_path / "a", meta)
    resumed.resume(plan.resume_from)
    assert resumed.position.step == 2 and reads == [tmp_path / "a" / "last.pt"]
    plan = plan_run(tmp_path / "b", vocab, {"init_from": str(tmp_path / "a" / "best.pt"), "max_steps": 1})
    Trainer(plan.model_config, plan.train_config, vocab, train, val, tmp_path / "b", meta,
            init_checkpoint=plan.init_checkpoint)
    assert len(reads) == 2 and len(manifests) == 1


def test_a_training_state_of_an_older_poetgen_is_refused_with_the_way_on(prepared, tmp_path):
    _scripted_trainer(prepared, tmp_path / "a", [3.0], max_steps=1).run()
    payload = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    del payload["train_state"]["pending_eval"]  # a field poetgen 0.1 did not write
    torch.save(payload, tmp_path / "a" / "last.pt")
    resumed = _scripted_trainer(prepared, tmp_path / "a", [], max_steps=2)
    with pytest.raises(CheckpointError, match="older poetgen .no pending_eval.: start a new run .* --init-from"):
        resumed.resume(tmp_path / "a" / "last.pt")


def test_train_cli_refuses_a_teacher_it_cannot_use(prepared, tiny_checkpoint, tmp_path):
    teacher = _teacher(prepared, tmp_path)
    cases = [
        (["--teacher", str(tmp_path / "none.pt")], "--teacher"),
        (["--teacher", str(tiny_checkpoint)], "another vocabulary"),
        (["--teacher", teacher, "--distill", "0"], "--distill must be in (0, 1]"),
        (["--teacher", teacher, "--sampled-softmax", "8"], "drop one of them"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared),
                                     "--max-steps", "1", "--quiet", *args])
        assert result.exit_code == 2, (args, result.stderr)
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert not (tmp_path / "r" / "last.pt").exists()
    ran = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--preset", "tiny",
                              *SMALL_TRAIN_ARGS, "--max-steps", "4", "--teacher", teacher, "--quiet", "--json"])
    assert ran.exit_code == 0, ran.stderr
    changed = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--resume",
                                  "--max-steps", "6", "--distill", "0.2", "--quiet"])
    assert changed.exit_code == 2 and "--distill cannot change on --resume" in changed.stderr
    alone = runner.invoke(app, ["train", "--out", str(tmp_path / "d"), "--data-dir", str(prepared), "--distill", "0.2",
                                "--max-steps", "1", "--quiet"])
    assert alone.exit_code == 2 and "give --teacher FILE too" in alone.stderr
    (tmp_path / "teacher" / "best.pt").write_bytes((tmp_path / "r" / "best.pt").read_bytes())  # another teacher
    moved = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--resume",
                                "--max-steps", "6", "--quiet"])
    assert moved.exit_code == 2 and "not the file this run started with" in moved.stderr, moved.stderr


def test_train_cli_bad_inputs(prepared, tmp_path, monkeypatch):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "none")])
    assert result.exit_code != 0 and "poetgen corpus prepare" in result.stderr
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "r"), "--data-dir", str(prepared)])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr
    cases = [
        (["--hidden-size", "0"], "hidden-size"),
        (["--dropout", "1.5"], "dropout"),
        (["--batch-size", "60000"], "too small for --batch-size"),
        (["--preset", "huge"], "unknown preset"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--cell", "transformer"], "unknown cell"),
        (["--train-split", "song"], "corpus prepare --with-song"),
        (["--train-split", "val"], "unknown --train-split"),
        (["--weight-drop", "1"], "weight-drop"),
        (["--sampled-softmax", "-3"], "--sampled-softmax must be 0 (off) or a number of negatives"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nope"], "device"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared),
                                     "--max-steps", "1", "--quiet", *args])
        assert result.exit_code != 0, args
        assert needle in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert not (tmp_path / "r" / "last.pt").exists()


def test_train_cli_then_eval_cli(prepared, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--preset", "tiny",
                                 *SMALL_TRAIN_ARGS, "--max-steps", "12", "--eval-every", "6", "--json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 12
    again = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--quiet"])
    assert again.exit_code != 0 and "--resume" in again.stderr
    resumed = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--resume",
                                  "--max-steps", "18", "--json", "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 18
    changed = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--resume",
                                  "--lr", "0.5", "--quiet"])
    assert changed.exit_code == 2 and "--lr cannot change on --resume" in changed.stderr

    ev = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--split", "val", "--json",
                             "--data-dir", str(prepared)])
    assert ev.exit_code == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert {"record", "body", "chars", "body_chars", "unknown"} <= set(result)
    metrics = result["record"]
    assert metrics["bits_per_char"] == pytest.approx(metrics["nats_per_char"] / math.log(2))
    metrics = result
    assert metrics["chars"] == corpus.load_meta(prepared)["tokens"]["val"] - 1

    poems = tmp_path / "poems.txt"
    poems.write_text("一丁七，丈三上。\n\nＸ丁七丈三，上一丁七丈。\n", encoding="utf-8")
    ev = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--file", str(poems), "--json"])
    assert ev.exit_code == 0, ev.stderr
    assert json.loads(ev.stdout)["unknown"] >= 1
    both = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt")])
    assert both.exit_code == 2 and "exactly one" in both.stderr


def test_resume_takes_the_runs_own_init_from_again(prepared, tmp_path):
    """--resume may repeat the --init-from the run started with (the path compared as last.pt stores it),
    and refuses another."""
    from cli_helpers import TINY_RUN, cli

    assert cli("train", "--out", str(tmp_path / "a"), "--max-steps", "2", "--data-dir", str(prepared),
               *TINY_RUN).exit_code == 0
    base = ["--data-dir", str(prepared), "--batch-size", "4", "--bptt", "8", "--eval-every", "100000"]
    start = ["train", "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "best.pt"), *base]
    assert cli(*start, "--max-steps", "2").exit_code == 0
    again = cli(*start, "--resume", "--max-steps", "4")
    assert again.exit_code == 0, again.stderr
    assert checkpoint.read(tmp_path / "b" / "last.pt").meta.step == 4
    other = cli("train", "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "b" / "last.pt"), *base,
                "--resume", "--max-steps", "6")
    assert other.exit_code == 2 and "--init-from cannot change on --resume" in other.stderr
