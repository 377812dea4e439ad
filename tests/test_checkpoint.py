"""Checkpoint files (poetgen.checkpoint): the round trip and half storage, the header read without
torch, refusals of foreign, damaged, older and newer files, the tone and 叠字 tables they carry, loading
without initializing, and the shipped model's absence."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import runner
from tiny import SMALL

from poetgen import card, checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.errors import CheckpointError
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import Vocab


def test_checkpoint_round_trip_and_half_storage(tmp_path):
    vocab = Vocab(["<unk>", "<bos>", "<sep>", "<eos>", "天", "地"])
    model = LanguageModel(ModelConfig(len(vocab), **SMALL)).eval()
    x = torch.randint(0, len(vocab), (1, 12))
    tones = {"天": [3, 1], "地": [0, 2]}
    checkpoint.save(tmp_path / "m.pt", model, vocab, ModelMeta(step=3), tones=tones)
    checkpoint.save(tmp_path / "h.pt", model, vocab, ModelMeta(step=3), half=True)
    loaded = checkpoint.load(tmp_path / "m.pt")
    full, half = loaded.model, checkpoint.load(tmp_path / "h.pt").model
    assert loaded.meta.step == 3 and loaded.vocab.tokens == vocab.tokens and loaded.tones == tones
    config, v, meta, header_tones = checkpoint.read_header(tmp_path / "m.pt")  # the same, without torch
    assert config == model.config and v.tokens == vocab.tokens and meta.step == 3 and header_tones == tones
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


def test_a_malformed_doubles_table_is_refused_and_attach_sets_one(tiny_checkpoint, tmp_path):
    with_table = checkpoint.attach(tiny_checkpoint, tmp_path / "d.pt", doubles={"丁": 7})
    assert with_table.doubles == {"丁": 7} and checkpoint.read(tiny_checkpoint).doubles is None
    assert card.describe(with_table)["doubles"].startswith("1 character")
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
