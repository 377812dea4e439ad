"""Pictures and measurements of what happens inside the model, on tiny synthetic models and data."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch
from synth import ALPHABET
from typer.testing import CliRunner

from poetgen import checkpoint, introspect, plot
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.errors import UsageError
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import SPECIALS, Vocab

runner = CliRunner()
VOCAB = Vocab([*SPECIALS, *ALPHABET[:20], *"，。"])


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def gradient_norm_direct(model: LanguageModel, ids: torch.Tensor, k: int) -> float:
    """introspect.gradient_norms for one window by another route: run the first steps without a graph, make
    the hidden state k steps before the end a leaf, and differentiate the loss with respect to it."""
    model = model.eval()
    T = ids.size(1) - 1
    with torch.no_grad():
        state = None
        for t in range(T - k):
            _, state = model.rnn(model.embed(ids[:, t:t + 1]), state)
    with torch.enable_grad():
        h = state[0] if isinstance(state, tuple) else state
        leaf = h.clone().requires_grad_(True)
        state = (leaf, state[1]) if isinstance(state, tuple) else leaf
        for t in range(T - k, T):
            _, state = model.rnn(model.embed(ids[:, t:t + 1]), state)
        top = (state[0] if isinstance(state, tuple) else state)[-1]  # (B, H)
        logits = model.head(top if model.proj is None else model.proj(top))
        loss = torch.nn.functional.cross_entropy(logits, ids[:, T], reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
    return float(grad.norm())


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradient_norms_equal_a_direct_autograd_computation(cell):
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=8, hidden_size=12, num_layers=2, cell=cell))
    stream = np.random.default_rng(0).integers(4, len(VOCAB), 40)
    measured = introspect.gradient_norms(model, stream, max_k=6, samples=1, seed=3)
    start = __import__("random").Random(3).randrange(0, len(stream) - 6 - 2)  # the window it chose
    ids = torch.tensor(stream[start:start + 8][None])
    direct = [gradient_norm_direct(model, ids, k) for k in range(7)]
    assert measured == pytest.approx([d / direct[0] for d in direct], rel=1e-4)


def long_range_stream(n: int, lag: int, rng) -> np.ndarray:
    """Random tokens, except that every token at t ≡ lag (mod 2·lag) repeats the one `lag` before."""
    s = rng.integers(4, len(VOCAB), n)
    for t in range(lag, n, 2 * lag):
        s[t] = s[t - lag]
    return s


def trained(cell: str, stream: np.ndarray, steps: int = 200) -> LanguageModel:
    """A tiny one-layer model after `steps` Adam steps (lr 1e-3, clipping 1) on windows of 60 characters."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=16, hidden_size=24, num_layers=1, cell=cell,
                                      dropout=0.0, emb_dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.tensor(stream).view(8, -1)
    for i in range(steps):
        x = data[:, (i % 4) * 60:(i % 4) * 60 + 61]
        loss, _ = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def test_a_trained_lstm_remembers_farther_than_a_tanh_rnn():
    stream = long_range_stream(8 * 300, 50, np.random.default_rng(0))
    norms = {cell: introspect.gradient_norms(trained(cell, stream), stream, max_k=60, samples=8, seed=0)
             for cell in ("rnn", "lstm")}
    assert norms["lstm"][50] > 10 * norms["rnn"][50], (norms["lstm"][50], norms["rnn"][50])


def planted_model() -> LanguageModel:
    """A one-layer tanh RNN whose unit 0 climbs along the line (-0.69, -0.46, -0.29, …) and falls back to
    -1 at each mark."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=4, hidden_size=4, num_layers=1, cell="rnn",
                                      tie_weights=False, dropout=0.0, emb_dropout=0.0))
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        for reset in ("，", "。", "<bos>", "<sep>"):  # every line starts from -1
            model.embed.weight[VOCAB.stoi[reset], 0] = -20.0
        model.rnn.weight_ih_l0[0] = torch.tensor([1.0, 0, 0, 0])
        model.rnn.weight_hh_l0[0] = torch.tensor([1.0, 0, 0, 0])
        model.rnn.bias_ih_l0[0], model.rnn.bias_hh_l0[0] = 0.15, 0.0
    return model.eval()


def synthetic_records(n: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(1)
    han = ALPHABET[:20]
    out = []
    for _ in range(n):
        chars = int(rng.choice([5, 7]))
        lines = ["".join(rng.choice(han, chars)) for _ in range(4)]
        out.append(("".join(rng.choice(han, 2)), f"{lines[0]}，{lines[1]}。{lines[2]}，{lines[3]}。"))
    return out


def test_find_recovers_a_planted_unit():
    found = introspect.find_units(planted_model(), VOCAB, synthetic_records(30))
    unit, r = found["position in line"][0]
    assert unit == "0:hidden 0" and r > 0.9
    assert found["distance to punctuation"][0][0] == "0:hidden 0"


def test_gate_means_by_position():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=8, hidden_size=8, num_layers=2)).eval()
    means = introspect.gate_means(model, VOCAB, synthetic_records(20), chars=5, layer=1)
    assert set(means) == {"input gate", "forget gate", "output gate"}
    assert all(len(v) == 6 and all(0 < x < 1 for x in v) for v in means.values())
    with pytest.raises(UsageError, match="LSTM"):
        introspect.gate_means(planted_model(), VOCAB, synthetic_records(2), chars=5)


def test_pngs_have_the_requested_size_and_repeat_byte_for_byte(tmp_path):
    runs = [plot.Run(tmp_path, "lstm 2x8", [1, 2, 3], [1.0, 2.0, 3.0], [5.0, 4.0, 3.5], [5.5, 4.2, 3.6])]
    for name in ("a.png", "b.png"):
        plot.training_curves(runs, tmp_path / name, size=(6, 3), dpi=50)
    assert png_size(tmp_path / "a.png") == (300, 150)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    plot.gradient_curves({"rnn": [1.0, 0.1, 0.01]}, tmp_path / "g.png", size=(4, 3), dpi=50)
    assert png_size(tmp_path / "g.png") == (200, 150)
    with pytest.raises(UsageError, match=".png"):
        plot.training_curves(runs, tmp_path / "a.jpg")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"poetgen\[plot\]"):
        plot.pyplot()


def test_plot_cli_reads_runs_and_renders_text(prepared, tmp_path):
    out = tmp_path / "run"
    trained_run = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--hidden-size", "16",
                                      "--emb-size", "8", "--batch-size", "4", "--bptt", "8", "--max-steps", "6",
                                      "--eval-every", "2", "--quiet"])
    assert trained_run.exit_code == 0, trained_run.stderr
    result = runner.invoke(app, ["plot", str(out), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.stderr
    assert "lstm 2x16" in result.stdout and "\x1b" not in result.stdout
    assert any(ch in result.stdout for ch in plot.SPARK)
    assert png_size(tmp_path / "c.png") == (1000, 400)
    missing = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "metrics.jsonl" in missing.stderr


def test_inspect_cells_cli_is_plain_when_piped(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, planted_model(), VOCAB, ModelMeta(script="traditional"))
    poem = "".join(ALPHABET[:5]) + "，" + "".join(ALPHABET[5:10]) + "。"
    result = runner.invoke(app, ["inspect", "cells", "-c", str(path), "--poem", poem, "--unit", "0:hidden 0",
                                 "-o", str(tmp_path / "u.html")])
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and result.stdout.startswith("unit 0:hidden 0")
    values = [float(tok[1:]) for tok in result.stdout.splitlines()[1].split()]
    assert values[:5] == sorted(values[:5]) and values[5] < values[0]  # climbs, then falls at the mark
    assert "<span" in (tmp_path / "u.html").read_text(encoding="utf-8")
    js = runner.invoke(app, ["inspect", "cells", "-c", str(path), "--poem", poem, "--unit", "0:hidden 0", "--json"])
    assert json.loads(js.stdout)["chars"] == list(poem)
    bad = runner.invoke(app, ["inspect", "cells", "-c", str(path), "--poem", poem, "--unit", "9:hidden 0"])
    assert bad.exit_code == 2 and "no unit" in bad.stderr
