"""Pictures and measurements of what happens inside the model, on tiny synthetic models and data."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch
from cli_helpers import TINY_TRAIN_ARGS, runner
from synth import ALPHABET
from tiny import save_tiny, tiny_model

from poetgen import checkpoint, corpus, introspect, plot
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.corpus import load_split
from poetgen.errors import UsageError
from poetgen.forms import detect
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import SPECIALS, Vocab

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


@pytest.mark.slow  # two small trainings: ~5 s
def test_a_trained_lstm_remembers_farther_than_a_tanh_rnn():
    """Trained on text whose tokens repeat the one 50 back, the LSTM's gradient reaches 50 characters
    back (more than before training) where the tanh RNN's has vanished."""
    stream = long_range_stream(8 * 300, 50, np.random.default_rng(0))
    norms = {cell: introspect.gradient_norms(trained(cell, stream), stream, max_k=60, samples=8, seed=0)
             for cell in ("rnn", "lstm")}
    untrained = introspect.gradient_norms(trained("lstm", stream, steps=0), stream, max_k=60, samples=8, seed=0)
    assert norms["lstm"][50] > 10 * norms["rnn"][50], (norms["lstm"][50], norms["rnn"][50])
    assert norms["lstm"][50] > 2 * untrained[50], (norms["lstm"][50], untrained[50])


def test_a_fresh_lstm_keeps_more_gradient_over_distance_than_a_fresh_tanh_rnn():
    stream = np.random.default_rng(0).integers(4, len(VOCAB), 400)
    norms = {cell: introspect.gradient_norms(trained(cell, stream, steps=0), stream, max_k=30, samples=4, seed=0)
             for cell in ("rnn", "lstm")}
    assert norms["lstm"][30] > 100 * norms["rnn"][30], (norms["lstm"][30], norms["rnn"][30])


def planted_model(vocab: Vocab = VOCAB) -> LanguageModel:
    """A one-layer tanh RNN whose unit 0 climbs along the line (-0.69, -0.46, -0.29, …) and falls back to
    -1 at each mark."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(len(vocab), emb_size=4, hidden_size=4, num_layers=1, cell="rnn",
                                      tie_weights=False, dropout=0.0, emb_dropout=0.0))
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        for reset in ("，", "。", "？", "！", "<bos>", "<sep>"):  # every line starts from -1
            if reset in vocab.stoi:
                model.embed.weight[vocab.stoi[reset], 0] = -20.0
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
    heard = []
    found = introspect.find_units(planted_model(), VOCAB, synthetic_records(30),
                                  progress=lambda d, t: heard.append((d, t)))
    assert heard == [(i, 30) for i in range(31)]  # each poem traced, then done
    unit, r = found["position in line"][0]
    assert unit == "0:hidden 0" and r > 0.9
    assert found["distance to punctuation"][0][0] == "0:hidden 0"


def test_gate_means_by_position():
    model = tiny_model(0, VOCAB, emb_size=8, hidden_size=8)
    heard = []
    means = introspect.gate_means(model, VOCAB, synthetic_records(20), chars=5, layer=1,
                                  progress=lambda d, t: heard.append((d, t)))
    assert heard[0] == (0, 20) and heard[-1] == (20, 20) and len(heard) == 21
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
    trained_run = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), *TINY_TRAIN_ARGS,
                                      "--max-steps", "6", "--eval-every", "2", "--quiet"])
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


# --- inspect gradients, gates and cells --find on the prepared synthetic corpus ---------------------

def table_rows(text: str) -> dict[str, list[str]]:
    """A printed table's rows by their label (the text before the first run of two spaces)."""
    return {line.split("  ")[0].strip(): line.split("  ", 1)[1].split() for line in text.splitlines() if "  " in line}


def test_inspect_gradients_cli_prints_and_returns_the_measured_curves(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    trained = save_tiny(tmp_path / "run" / "m.pt", tiny_model(4, vocab, cell="gru", layers=1), vocab)
    args = ["inspect", "gradients", "-c", str(trained), "--cell", "rnn", "--cell", "lstm", "--hidden-size", "8",
            "--layers", "1", "--max-k", "20", "--samples", "3", "--seed", "2", "--data-dir", str(prepared)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    stream = load_split(prepared, "val")
    expected = {"gru 1x16 (run/m.pt)": introspect.gradient_norms(checkpoint.load(trained).model, stream, 20, 3, 2)}
    for cell in ("rnn", "lstm"):
        fresh = introspect.fresh_model(len(vocab), cell, 8, 1, seed=2)
        expected[f"{cell} 1x8 (fresh)"] = introspect.gradient_norms(fresh, stream, 20, 3, 2)
    data = json.loads(result.stdout)
    assert (data["max_k"], data["samples"], list(data["curves"])) == (20, 3, list(expected))
    for label, curve in expected.items():
        assert len(curve) == 21 and curve[0] == 1.0 and curve[20] > 0
        assert data["curves"][label] == pytest.approx(curve, rel=1e-6), label
    assert expected["rnn 1x8 (fresh)"] != expected["lstm 1x8 (fresh)"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.stderr
    rows = table_rows(text.stdout)
    assert rows["model"] == ["k=0", "k=1", "k=2", "k=5", "k=10", "k=20"]
    for label, curve in expected.items():
        assert rows[label] == [f"{curve[k]:.1e}" for k in (0, 1, 2, 5, 10, 20)], label
    nothing = runner.invoke(app, ["inspect", "gradients", "--data-dir", str(prepared)])
    assert nothing.exit_code == 2 and "--cell" in nothing.stderr
    other = runner.invoke(app, ["inspect", "gradients", "-c", str(save_tiny(tmp_path / "other.pt")), "--data-dir",
                                str(prepared)])
    assert other.exit_code == 2 and "another vocabulary" in other.stderr and "--data-dir" in other.stderr


def gates_by_hand(model: LanguageModel, vocab: Vocab, records, chars: int, layer: int) -> dict[str, list[float]]:
    """The mean input/forget/output gates at each position of the lines (the mark last), from the LSTM
    equations on the module's own weights and the hidden states nn.LSTM gives layer by layer."""
    rnn = model.rnn
    sums, counts = np.zeros((3, chars + 1)), np.zeros(chars + 1)
    for title, body in records:
        ids = vocab.encode_record(title, body)[:-1]  # <bos> title <sep> body
        with torch.no_grad():
            x = model.embed(torch.tensor([ids]))  # (1, T, E)
            for below in range(layer):  # the layers below, one at a time
                one = torch.nn.LSTM(x.size(-1), rnn.hidden_size, batch_first=True)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(one, f"{name}_l0").copy_(getattr(rnn, f"{name}_l{below}"))
                x, _ = one(x)
            one = torch.nn.LSTM(x.size(-1), rnn.hidden_size, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(one, f"{name}_l0").copy_(getattr(rnn, f"{name}_l{layer}"))
            h, _ = one(x)
            h_before = torch.cat([torch.zeros(1, 1, rnn.hidden_size), h[:, :-1]], 1)
            z = x @ getattr(rnn, f"weight_ih_l{layer}").T + h_before @ getattr(rnn, f"weight_hh_l{layer}").T \
                + getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
            i, f, _, o = z[0].chunk(4, dim=-1)  # nn.LSTM's order: input, forget, cell, output
            gates = torch.stack([i.sigmoid(), f.sigmoid(), o.sigmoid()]).mean(-1).numpy()  # (3, T)
        column = 0
        for t in range(ids.index(vocab.sep_id) + 1, len(ids)):
            mark = vocab.tokens[ids[t]] in "，。？！；：、"
            sums[:, chars if mark else column] += gates[:, t]
            counts[chars if mark else column] += 1
            column = 0 if mark else column + 1
    means = sums / counts
    return {"input gate": means[0].tolist(), "forget gate": means[1].tolist(), "output gate": means[2].tolist()}


def test_inspect_gates_cli_gives_the_mean_gates_along_the_line(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    model = tiny_model(5, vocab, emb_size=8, hidden_size=8)
    path = save_tiny(tmp_path / "m.pt", model, vocab)
    records = [r for r in corpus.val_records(prepared, 1000, "traditional")
               if (form := detect(r[1])) is not None and form.chars == 5]
    assert len(records) >= 2
    expected = gates_by_hand(model, vocab, records[:2], chars=5, layer=1)
    args = ["inspect", "gates", "-c", str(path), "--chars", "5", "--layer", "1", "--poems", "2", "--data-dir",
            str(prepared)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["layer"], data["chars"], data["poems"]) == (1, 5, 2)
    assert data["positions"] == ["1", "2", "3", "4", "5", "mark"]
    assert list(data["means"]) == list(expected)
    for gate, values in expected.items():
        assert data["means"][gate] == pytest.approx(values, abs=1e-5), gate
    text = runner.invoke(app, [*args, "-o", str(tmp_path / "gates.png")])
    assert text.exit_code == 0, text.stderr
    assert text.stdout.splitlines()[0] == "layer 1, 2 poems of 5-character lines"
    rows = table_rows(text.stdout)
    for gate, values in expected.items():
        assert [float(v) for v in rows[gate]] == pytest.approx(values, abs=5e-4), gate
    assert png_size(tmp_path / "gates.png") == (700, 400) and "wrote" in text.stderr
    too_deep = runner.invoke(app, ["inspect", "gates", "-c", str(path), "--layer", "2", "--data-dir", str(prepared)])
    assert too_deep.exit_code == 2 and "the model has 2 layers" in too_deep.stderr
    six = runner.invoke(app, ["inspect", "gates", "-c", str(path), "--chars", "6", "--data-dir", str(prepared)])
    assert six.exit_code == 2 and "no lines of 6 characters" in six.stderr
    gru = save_tiny(tmp_path / "gru.pt", tiny_model(5, vocab, cell="gru"), vocab)
    not_lstm = runner.invoke(app, ["inspect", "gates", "-c", str(gru), "--chars", "5", "--data-dir", str(prepared)])
    assert not_lstm.exit_code == 2 and "LSTM" in not_lstm.stderr


def test_inspect_cells_png_has_a_colour_bar_and_says_when_no_font_draws_chinese(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    path = tmp_path / "m.pt"
    checkpoint.save(path, planted_model(), VOCAB, ModelMeta(script="traditional"))
    poem = "".join(ALPHABET[:5]) + "，" + "".join(ALPHABET[5:10]) + "。"
    args = ["inspect", "cells", "-c", str(path), "--poem", poem, "--unit", "0:hidden 0"]
    monkeypatch.setattr(plot, "cjk_font", lambda: None)
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "cell.png")])
    assert result.exit_code == 0, result.stderr
    assert "warning: no font that draws Chinese" in result.stderr and "fonts-noto-cjk" in result.stderr
    assert png_size(tmp_path / "cell.png")[0] > 5 * 55  # five cells and the colour bar beside them
    monkeypatch.setattr(plot, "cjk_font", lambda: "DejaVu Sans")
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "cell2.png")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    figures = []
    monkeypatch.setattr(plot, "save", lambda fig, output: figures.append(fig))
    plot.activation_strip(poem, [0.0] * len(poem), "unit", tmp_path / "x.png")
    assert len(figures[0].axes) == 2  # the poem and its colour bar


def test_inspect_cells_shows_the_first_val_poem_the_model_can_read(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    records = corpus.val_records(prepared, 30, "traditional")
    missing = next(c for c in records[0][1] if c in vocab.stoi and c not in "，。？！")
    lacking = Vocab([t if t != missing else "龘" for t in vocab.tokens])  # a model that never saw it
    path = save_tiny(tmp_path / "lacking.pt", planted_model(lacking), lacking)
    result = runner.invoke(app, ["inspect", "cells", "-c", str(path), "--find", "--poems", "30", "--data-dir",
                                 str(prepared), "--json"])
    assert result.exit_code == 0, result.stderr
    shown = "".join(json.loads(result.stdout)["chars"])
    assert missing not in shown and shown == next(b for t, b in records if missing not in t + b)


def test_inspect_cells_find_ranks_the_planted_unit_first_and_shows_it(prepared, tmp_path):
    vocab = Vocab.load(prepared / "vocab.json")
    path = save_tiny(tmp_path / "planted.pt", planted_model(vocab), vocab)
    args = ["inspect", "cells", "-c", str(path), "--find", "--poems", "30", "--data-dir", str(prepared)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["find"]) == set(introspect.PROPERTIES)
    (unit, r), *_ = data["find"]["position in line"]
    assert unit == "0:hidden 0" and r > 0.9
    assert data["find"]["distance to punctuation"][0][0] == "0:hidden 0"
    assert data["unit"] == "0:hidden 0"  # no --unit: the best for position in line
    _, first_body = corpus.val_records(prepared, 1, "traditional")[0]  # no --poem: the first val poem
    assert "".join(data["chars"]) == first_body
    line = [v for ch, v in zip(data["chars"], data["activations"], strict=True) if ch not in "，。？！"][:5]
    assert line == sorted(line)  # it climbs along the first line
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith(f"position in line: 0:hidden 0 (r = {r:+.2f})")
    assert "\n\nunit 0:hidden 0\n" in text.stdout
