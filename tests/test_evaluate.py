"""`poetgen eval` on a split or a file: a model of another vocabulary reads the split's text, and text
outside the model's vocabulary is counted and said."""

from __future__ import annotations

import json

import torch
from cli_helpers import cli, runner
from tiny import SMALL

from poetgen import checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.corpus import load_split
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import Vocab


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


def test_eval_of_text_the_model_cannot_read_says_so(tiny_checkpoint, tmp_path):
    (tmp_path / "t.txt").write_text("hello world\n", encoding="utf-8")
    result = cli("eval", "-c", str(tiny_checkpoint), "--file", str(tmp_path / "t.txt"))
    assert result.exit_code == 0, result.stderr
    assert "outside the model's vocabulary" in result.stderr and "unknown, " in result.stdout
