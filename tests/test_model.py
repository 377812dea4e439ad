from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import poetgen
from poetgen import checkpoint, corpus
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.data import batchify, get_batch, load_split, num_windows
from poetgen.errors import CheckpointError, UsageError
from poetgen.evaluate import evaluate_stream
from poetgen.model import LanguageModel, ModelConfig, NegativeSampler
from poetgen.train import TrainConfig, Trainer, TrainingInterrupted
from poetgen.vocab import SPECIALS, Vocab

runner = CliRunner()
SMALL = dict(emb_size=24, hidden_size=32, num_layers=2, emb_dropout=0.1, dropout=0.2)


def streams(prepared):
    return load_split(prepared, "train"), load_split(prepared, "val")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_loss_with_carried_state_equals_whole_sequence(cell):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=50, cell=cell, **SMALL)).eval()
    seq = torch.randint(0, 50, (3, 241))
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
        whole = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), seq[:, 1:].reshape(-1), reduction="sum")
        total, state = 0.0, None
        for i in range(num_windows(seq, 37)):
            x, y = get_batch(seq, i, 37)
            out, state = model(x, state)
            total += torch.nn.functional.cross_entropy(out.reshape(-1, 50), y.reshape(-1), reduction="sum").item()
    assert total == pytest.approx(whole.item(), rel=1e-5)


def test_batchify_rows_are_contiguous():
    data = np.arange(103)
    b = batchify(data, 4)
    assert b.shape == (4, 25)
    assert b[1, 0].item() == 25 and b[3, -1].item() == 99
    x, y = get_batch(b, num_windows(b, 10) - 1, 10)
    assert torch.equal(y, x + 1) and x.shape[1] == 4  # the last window is shorter


def test_weight_tying_shares_one_matrix_and_projection_when_sizes_differ():
    tied = LanguageModel(ModelConfig(vocab_size=30, emb_size=16, hidden_size=32))
    assert tied.head.weight is tied.embed.weight and tied.proj is not None
    same = LanguageModel(ModelConfig(vocab_size=30, emb_size=32, hidden_size=32))
    assert same.proj is None
    untied = LanguageModel(ModelConfig(vocab_size=30, emb_size=16, hidden_size=32, tie_weights=False))
    assert untied.head.weight is not untied.embed.weight


def test_dropout_only_in_training_mode():
    model = LanguageModel(ModelConfig(vocab_size=30, **SMALL))
    x = torch.randint(0, 30, (2, 10))
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


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
        if trainer.step == 15:
            raise KeyboardInterrupt

    first = _trainer(prepared, tmp_path / "b")
    with pytest.raises(TrainingInterrupted, match="--resume"):
        first.run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b")
    second.resume(tmp_path / "b" / "last.pt")
    assert second.step == 15
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
    interrupted.on_event = signal_at_second_validation
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 20"):
        interrupted.run()
    assert interrupted.evaluated_step == 10
    resumed = _trainer(prepared, tmp_path / "b")
    resumed.on_event = lambda e: windows_seen.append(e["step"]) if e["event"] == "eval" else None
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.step == 20 and resumed.evaluated_step == 10
    b = resumed.run()
    assert windows_seen == [20, 30]  # step 20 validated again before training goes on
    assert b["best_val_loss"] == a["best_val_loss"]
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]
    evals = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["event"] == "eval"] == [10, 20, 30]
    assert all(e["train_loss"] is not None and e["tokens_per_s"] > 0 for e in evals if e["event"] == "eval")
    # the pending validation is kept in last.pt, so it is redone even when --resume changes --eval-every
    again = _trainer(prepared, tmp_path / "c")
    again.on_event = lambda e: (setattr(again._stop, "signal_name", "SIGTERM")
                                if e["event"] == "evaluating" and e["step"] == 20 else None)
    with pytest.raises(TrainingInterrupted):
        again.run()
    steps = []
    other = _trainer(prepared, tmp_path / "c", eval_every=7)
    other.on_event = lambda e: steps.append(e["step"]) if e["event"] == "eval" else None
    other.resume(tmp_path / "c" / "last.pt")
    other.run()
    assert steps == [20, 21, 28, 30]


def test_warm_start_takes_the_weights_but_not_the_schedule(prepared, tmp_path):
    first = _trainer(prepared, tmp_path / "a")
    first.run()
    best = tmp_path / "a" / "best.pt"
    loaded = checkpoint.load(best)
    model, best_val_loss = loaded.model, loaded.meta.best_val_loss
    warm = _trainer(prepared, tmp_path / "b", init_from=str(best), lr=3e-4)
    assert warm.step == 0 and math.isinf(warm.best_val)
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
                   tmp_path / "w", on_event=events.append)
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


def test_bf16_autocast_on_a_cpu_without_a_bf16_lstm_runs_the_recurrence_in_fp32(monkeypatch):
    import poetgen.model

    model = LanguageModel(ModelConfig(10, **SMALL)).train()
    x = torch.randint(0, 10, (2, 5))
    monkeypatch.setattr(poetgen.model, "cpu_lstm_has_bf16", lambda: False)
    seen = []
    model.rnn.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (h, c) = model(x)
    assert seen == [(torch.float32, torch.float32)] and h.dtype == torch.float32
    assert logits.dtype == torch.bfloat16  # the output layer still in bf16
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


def test_the_bf16_probe_leaves_the_random_stream_alone():
    from poetgen.device import cpu_lstm_has_bf16

    cpu_lstm_has_bf16.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cpu_lstm_has_bf16()
    assert torch.equal(torch.rand(3), expected)  # a resumed bf16 run draws the masks it would have drawn


def test_checkpoint_round_trip_and_half_storage(tmp_path):
    vocab = Vocab(["<unk>", "<bos>", "<sep>", "<eos>", "天", "地"])
    model = LanguageModel(ModelConfig(len(vocab), **SMALL)).eval()
    x = torch.randint(0, len(vocab), (1, 12))
    checkpoint.save(tmp_path / "m.pt", model, vocab, ModelMeta(step=3), tones={"天": [3, 1]})
    checkpoint.save(tmp_path / "h.pt", model, vocab, ModelMeta(step=3), half=True)
    loaded = checkpoint.load(tmp_path / "m.pt")
    full, half = loaded.model, checkpoint.load(tmp_path / "h.pt").model
    assert loaded.meta.step == 3 and loaded.vocab.tokens == vocab.tokens and loaded.tones == {"天": [3, 1]}
    config, v, meta, tones = checkpoint.read_header(tmp_path / "m.pt")  # the same, without torch
    assert config == model.config and v.tokens == vocab.tokens and meta.step == 3 and tones == {"天": [3, 1]}
    assert torch.equal(full(x)[0], model(x)[0])
    assert torch.allclose(half(x)[0], model(x)[0], atol=1e-2)
    assert (tmp_path / "h.pt").stat().st_size < (tmp_path / "m.pt").stat().st_size


def test_foreign_and_damaged_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "opcodes.pt").write_text("root:x:0:0:root:/root:/bin/sh\n")  # 'r' reads as a pickle opcode
    vocab = Vocab(["<unk>", "<bos>", "<sep>", "<eos>", "天"])
    checkpoint.save(tmp_path / "ok.pt", LanguageModel(ModelConfig(len(vocab), **SMALL)), vocab, ModelMeta())
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "newer.pt")
    for name, needle in [("foreign.pt", "not a poetgen checkpoint"), ("text.pt", "not a readable"),
                         ("opcodes.pt", "not a readable"),
                         ("cut.pt", "not a readable"), ("newer.pt", "newer poetgen"), ("missing.pt", "no checkpoint")]:
        with pytest.raises(CheckpointError, match=needle):
            checkpoint.load(tmp_path / name)
        (tmp_path / "x").write_text("天天天天天，天天天天天。\n", encoding="utf-8")
        result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / name), "--file", str(tmp_path / "x")])
        assert result.exit_code != 0 and needle in result.stderr and "Traceback" not in result.stderr
        if name != "foreign.pt":  # the fast reader of `check` says the same
            with pytest.raises(CheckpointError, match=needle):
                checkpoint.read_header(tmp_path / name)


@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(num_layers=-1), dict(dropout=1.0), dict(cell="lstmx")])
def test_impossible_model_shapes_are_refused(bad):
    with pytest.raises(UsageError):
        ModelConfig(vocab_size=10, **bad).validate()


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
                                 "--hidden-size", "32", "--emb-size", "16", "--batch-size", "8", "--bptt", "16",
                                 "--max-steps", "12", "--eval-every", "6", "--json", "--quiet"])
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


def test_tone_tables_of_either_storage_load_and_malformed_ones_are_refused(tmp_path):
    vocab = Vocab(["<unk>", "<bos>", "<sep>", "<eos>", "天", "地"])
    model = LanguageModel(ModelConfig(len(vocab), **SMALL)).eval()
    tones = {"天": [3, 1], "地": [0, 7]}
    checkpoint.save(tmp_path / "m.pt", model, vocab, ModelMeta(step=3), tones=tones)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["tones"] == {"chars": "天地", "counts": [3, 1, 0, 7]}
    assert raw["format_version"] == 3
    raw["tones"], raw["format_version"] = tones, 2  # as files before poetgen 0.5 store it
    torch.save(raw, tmp_path / "old.pt")
    assert checkpoint.load(tmp_path / "old.pt").tones == tones == checkpoint.read_header(tmp_path / "m.pt")[3]
    checkpoint.attach(tmp_path / "old.pt", tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again["tones"] == {"chars": "天地", "counts": [3, 1, 0, 7]} and again["format_version"] == 3
    raw["format_version"] = 1
    torch.save(raw, tmp_path / "oldest.pt")
    with pytest.raises(CheckpointError, match="older poetgen"):
        checkpoint.read(tmp_path / "oldest.pt")
    raw["format_version"] = 3
    for bad in ({"chars": "天地", "counts": [3, 1, 0]}, {"chars": "天天", "counts": [3, 1, 0, 7]},
                {"chars": "天地", "counts": [3, 1, 0, "7"]}, {"天": [3]}, ["天"]):
        raw["tones"] = bad
        torch.save(raw, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="tone table"):
            checkpoint.read(tmp_path / "bad.pt")


def test_export_writes_a_half_model_with_test_figures_and_tones(prepared, tmp_path):
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--hidden-size", "32",
                                  "--emb-size", "16", "--batch-size", "8", "--bptt", "16", "--max-steps", "6",
                                  "--eval-every", "3", "--quiet"])
    assert trained.exit_code == 0, trained.stderr
    shipped = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", "-c", str(out / "best.pt"), "-o", str(shipped), "--data-dir",
                                 str(prepared)])
    assert result.exit_code == 0, result.stderr
    payload = torch.load(shipped, weights_only=True)
    expected_tones = json.loads((prepared / "tones.json").read_text(encoding="utf-8"))
    assert payload["tones"] == checkpoint.pack_tones(expected_tones)  # stored packed
    assert checkpoint.load(shipped).tones == expected_tones
    doubles = corpus.count_doubles(p.body for p in corpus.iter_poems(prepared, "train"))
    assert payload["doubles"] == doubles and torch.load(out / "best.pt", weights_only=True)["doubles"] == doubles
    assert "train_state" not in payload
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    test = runner.invoke(app, ["eval", "--checkpoint", str(shipped), "--split", "test", "--json",
                               "--data-dir", str(prepared)])
    assert json.loads(test.stdout)["record"] == pytest.approx(payload["meta"]["test"]["record"])
    info = runner.invoke(app, ["info", "--checkpoint", str(shipped), "--json"])
    card = json.loads(info.stdout)
    assert card["parameters"] == LanguageModel(ModelConfig.from_dict(card["model_config"])).num_parameters()
    assert card["test"]["body"]["perplexity"] == pytest.approx(payload["meta"]["test"]["body"]["perplexity"])
    assert card["corpus"]["version"] == "2.0.1"
    assert card["software"]["torch"] == torch.__version__ and card["software"]["poetgen"] == poetgen.__version__


def test_count_doubles_counts_pairs_inside_lines_only():
    assert corpus.count_doubles(["萧萧落叶，叶叶风。", "悠悠，悠悠。", "ＡＡ一，一二。"]) == {"叶": 1, "悠": 2, "萧": 1}


def test_a_malformed_doubles_table_is_refused_and_attach_sets_one(tiny_checkpoint, tmp_path):
    with_table = checkpoint.attach(tiny_checkpoint, tmp_path / "d.pt", doubles={"丁": 7})
    assert with_table.doubles == {"丁": 7} and checkpoint.read(tiny_checkpoint).doubles is None
    assert checkpoint.describe(with_table)["doubles"].startswith("1 character")
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["doubles"] = {"丁": -1}
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="叠字 table"):
        checkpoint.read(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="optional part"):
        checkpoint.attach(tiny_checkpoint, tmp_path / "x.pt", tones={})


def test_a_model_loads_without_initializing_and_keeps_its_weights_tied(tiny_checkpoint):
    import torch.nn as nn

    loaded = checkpoint.load(tiny_checkpoint)
    assert loaded.model.head.weight is loaded.model.embed.weight
    fresh = LanguageModel(loaded.config)
    fresh.load_state_dict({k: v.float() for k, v in loaded.state_dict.items()}, strict=False)
    for name, value in fresh.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert float(nn.init.uniform_(torch.zeros(64)).abs().sum()) > 0  # torch.nn.init is itself again


def test_skipping_initialization_is_the_loading_threads_alone():
    """While one thread builds a model without initializing it, another initializes as usual, and
    nothing stays switched off after (two overlapping loads once left torch.nn.init disabled)."""
    import threading

    from poetgen.checkpoint import _without_init

    inside, done, seen = threading.Event(), threading.Event(), {}

    def other():
        inside.wait(5)
        seen["other"] = float(torch.nn.init.uniform_(torch.zeros(8), 1.0, 2.0).sum())
        with _without_init():  # an overlapping load in this thread
            seen["other skipped"] = float(torch.nn.init.uniform_(torch.zeros(8), 1.0, 2.0).sum())
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with _without_init():
        inside.set()
        done.wait(5)
        seen["this"] = float(torch.nn.init.uniform_(torch.zeros(8), 1.0, 2.0).sum())
    thread.join()
    assert seen["other"] >= 8 and seen["other skipped"] == 0 and seen["this"] == 0
    assert float(torch.nn.init.uniform_(torch.zeros(8), 1.0, 2.0).sum()) >= 8
    assert float(torch.nn.Linear(8, 8).weight.detach().abs().sum()) > 0


def test_missing_shipped_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr("poetgen.paths.checkout_root", lambda: None)
    monkeypatch.setattr("importlib.resources.files", lambda name: tmp_path)
    with pytest.raises(CheckpointError, match="--checkpoint"):
        checkpoint.default_checkpoint()


# --- AWD-LSTM regularizers ------------------------------------------------------------------------

AWD = dict(locked_dropout=True, char_dropout=0.2, weight_drop=0.5, emb_dropout=0.3, dropout=0.4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_locked_layer_by_layer_path_equals_the_module_and_chunks_equal_the_whole(cell):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, cell=cell, **{**SMALL, "num_layers": 3, "emb_dropout": 0.0, "dropout": 0.0})
    model = LanguageModel(config)
    seq = torch.randint(0, 50, (3, 121))
    with torch.no_grad():
        plain, _ = model.eval()(seq)
        config.locked_dropout = True  # rates 0: the layer-by-layer path computes the same function
        model.train()
        whole, _ = model(seq)
        pieces, state = [], None
        for start in range(0, 121, 29):
            out, state = model(seq[:, start:start + 29], state)
            pieces.append(out)
    assert torch.allclose(whole, plain, atol=1e-5)
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-5)


def test_locked_masks_are_constant_across_time_within_a_window():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=40, **{**SMALL, **AWD, "num_layers": 3, "char_dropout": 0.0})).train()
    masks = []
    drop = model._drop

    def spy(x, p):
        y = drop(x, p)
        masks.append((y != 0).float() * (x != 0).float())
        return y

    model._drop = spy
    model(torch.randint(0, 40, (4, 25)))
    assert len(masks) == 4  # embeddings, two between layers, the output
    for m in masks:
        assert torch.equal(m, m[:, :1].expand_as(m))  # every step of a row has its first step's mask
        assert 0 < float(m.mean()) < 1
        assert not torch.equal(m[0], m[1])  # rows differ


def test_char_dropout_drops_every_occurrence_of_a_character():
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(vocab_size=12, **{**SMALL, **AWD})).train()
    x = torch.randint(0, 12, (6, 30))
    zero = (model._embed(x) == 0).all(-1)
    for ch in range(12):
        at = zero[x == ch]
        assert bool(at.all()) or not bool(at.any())  # all occurrences dropped, or none
    assert 0 < float(zero.float().mean()) < 1
    model.eval()
    assert not bool((model._embed(x) == 0).all(-1).any())


def test_regularized_model_evaluates_deterministically_and_trains_its_raw_weights():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=30, **{**SMALL, **AWD}))
    x = torch.randint(0, 30, (3, 20))
    model.eval()
    a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)
    plain = LanguageModel(ModelConfig(vocab_size=30, **SMALL))
    plain.load_state_dict(model.state_dict())  # the same keys: the regularizers add no weights
    assert torch.allclose(plain.eval()(x)[0], a, atol=1e-6)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    loss, _ = model.loss(x, x)
    loss.backward()
    assert float(model.rnn.weight_hh_l0.grad.abs().sum()) > 0


def test_fast_step_matches_a_regularized_model_at_inference():
    from poetgen.model import Stepper

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=30, **{**SMALL, **AWD}))
    ids = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        full, _ = model.eval()(ids)
    stepper = Stepper(model)
    logits, state = stepper.prefill(ids[:, :1])
    for t in range(1, 7):
        logits, state = stepper.step(ids[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-5)


def test_eval_split_with_a_model_of_another_vocabulary_reads_the_split_text(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    other = Vocab([*vocab.tokens[:4], "丐", *reversed(vocab.tokens[4:])])  # same characters, other ids, one more
    torch.manual_seed(0)
    path = tmp_path / "other.pt"
    checkpoint.save(path, LanguageModel(ModelConfig(vocab_size=len(other), **SMALL)), other,
                    ModelMeta(script="traditional"))
    result = runner.invoke(app, ["eval", "-c", str(path), "--split", "val", "--data-dir", str(prepared), "--json"])
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert "model's vocabulary" in figures["source"]
    assert figures["chars"] == len(load_split(prepared, "val")) - 1  # the same text, token for token
    checkpoint.save(path, LanguageModel(ModelConfig(vocab_size=len(other), **SMALL)), other,
                    ModelMeta(script="simplified"))
    wrong = runner.invoke(app, ["eval", "-c", str(path), "--split", "val", "--data-dir", str(prepared)])
    assert wrong.exit_code != 0 and "--script simplified" in wrong.stderr


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("emb", "hidden", "tie"), [(24, 32, True), (32, 32, True), (24, 32, False)])
def test_weight_shapes_are_the_modules_own(cell, emb, hidden, tie):
    config = ModelConfig(vocab_size=40, emb_size=emb, hidden_size=hidden, num_layers=3, cell=cell, tie_weights=tie)
    real = {k: tuple(v.shape) for k, v in LanguageModel(config).state_dict().items()}
    assert LanguageModel.weight_shapes(config) == real


def test_negative_sampler_keeps_every_target_and_corrects_only_the_negatives():
    torch.manual_seed(0)
    counts = torch.randint(0, 1000, (60,))
    sampler = NegativeSampler(counts, 25)
    targets = torch.tensor([3, 3, 7, 11, 59, 0])
    columns, correction, index = sampler.draw(targets)
    assert torch.equal(columns, torch.unique(columns)) and len(columns) > len(set(targets.tolist()))
    assert torch.equal(columns[index], targets)
    is_target = torch.isin(columns, targets)
    assert torch.all(correction[is_target] == 0) and torch.all(correction[~is_target] < 0)
    # a negative's correction is log(1 - (1 - q)^k), q from the counts + 1 to the power 0.75
    q = (counts.double() + 1) ** 0.75
    q /= q.sum()
    expected = torch.log(1 - (1 - q[columns[~is_target]]) ** 25)
    assert torch.allclose(correction[~is_target].double(), expected, atol=1e-5)


def test_sampled_softmax_over_every_column_is_the_full_softmax(prepared):
    """When the draws hold the whole vocabulary, each column is certain to be in the set: no
    correction, and the loss and its gradients are the full softmax's."""
    vocab = Vocab.load(prepared / "vocab.json")
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(len(vocab), **{**SMALL, "dropout": 0.0, "emb_dropout": 0.0})).train()
    x = torch.randint(0, len(vocab), (4, 12))
    y = torch.randint(0, len(vocab), (4, 12))
    full, _ = model.loss(x, y)
    full.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    sampled, _ = model.loss(x, y, negatives=NegativeSampler(torch.ones(len(vocab)), 200_000))
    sampled.backward()
    assert sampled.item() == pytest.approx(full.item(), abs=1e-5)
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[k], atol=1e-6), k
    # with few negatives the set is smaller than the vocabulary and the loss differs; evaluation ignores it
    small = NegativeSampler(torch.ones(len(vocab)), 3)
    assert len(small.draw(y.reshape(-1))[0]) < len(vocab)
    model.eval()
    assert model.loss(x, y, negatives=small)[0].item() == pytest.approx(full.item(), abs=1e-5)


@pytest.mark.slow  # two trainings of 120 steps
def test_training_with_a_sampled_softmax_learns_about_as_well_as_the_full_softmax(prepared, tmp_path):
    sampled = _trainer(prepared, tmp_path / "s", sampled_softmax=8, max_steps=120, eval_every=120)
    before = sampled.validate()["record"]["nats_per_char"]
    learned = sampled.run()["best_val_loss"]
    full = _trainer(prepared, tmp_path / "f", max_steps=120, eval_every=120).run()["best_val_loss"]
    assert learned < before - 0.05 and abs(learned - full) < 0.05 and learned != full


def test_training_with_a_sampled_softmax_resumes_exactly(prepared, tmp_path):
    def interrupt(trainer):
        if trainer.step == 15:
            raise KeyboardInterrupt

    a = _trainer(prepared, tmp_path / "a", sampled_softmax=8).run()
    with pytest.raises(TrainingInterrupted):
        _trainer(prepared, tmp_path / "b", sampled_softmax=8).run(on_step=interrupt)
    second = _trainer(prepared, tmp_path / "b", sampled_softmax=8)
    second.resume(tmp_path / "b" / "last.pt")
    b = second.run()
    assert b["last_val"]["record"]["nats_per_char"] == a["last_val"]["record"]["nats_per_char"]



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
        if trainer.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        first.run(on_step=interrupt)
    resumed = _scripted_trainer(prepared, tmp_path / "b", [2.7, 1.0], patience=2)
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.run()["steps"] == 4


def test_a_run_reads_its_checkpoint_and_corpus_manifest_once(prepared, tmp_path, monkeypatch):
    from poetgen.data import load_train
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
    assert resumed.step == 2 and reads == [tmp_path / "a" / "last.pt"]
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


def test_threads_follow_the_request_the_environment_then_the_free_cores(monkeypatch):
    import subprocess
    import sys

    from poetgen import device

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device.cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.cpu_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(device, "busy_cores", lambda: 1)
    assert device.cpu_threads() == 3
    monkeypatch.setattr(device, "busy_cores", lambda: 9)
    assert device.cpu_threads() == 1  # never fewer than one
    monkeypatch.undo()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert device.busy_cores() >= 1  # a process that keeps a core busy is counted
    finally:
        spinner.kill()
        spinner.wait()


def test_the_resumed_log_reports_what_the_uninterrupted_one_does(prepared, tmp_path):
    straight = _trainer(prepared, tmp_path / "a")
    straight.run()

    def interrupt(trainer):
        if trainer.step == 13:  # between two log lines (every 5 steps): three steps' loss not yet reported
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
