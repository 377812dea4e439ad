"""Looking inside a recurrent model: gradients through time, the activations of every unit and gate
over a poem, the units that track a property of the verse, and the gates' means along the line.

All of it runs the model one character at a time on the CPU, in eval mode (no dropout)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .errors import UsageError
from .forms import split_lines
from .model import LanguageModel
from .text import LINE_END, full_width_marks, to_script
from .vocab import Vocab

PROPERTIES = ("position in line", "line number", "distance to punctuation", "rhyme position", "title vs body")


def _top(model: LanguageModel, h_top: torch.Tensor) -> torch.Tensor:
    """Logits from the top layer's hidden state (B, H)."""
    y = h_top if model.proj is None else model.proj(h_top)
    return model.head(y)


def _hidden(state):
    return state[0] if isinstance(state, tuple) else state


def fresh_model(vocab_size: int, cell: str, hidden_size: int, num_layers: int, seed: int) -> LanguageModel:
    """A freshly initialized model of `cell` (weights drawn from `seed`): the untrained baseline that
    `poetgen inspect gradients --cell` measures."""
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig(vocab_size, emb_size=max(8, hidden_size // 2), hidden_size=hidden_size,
                                     num_layers=num_layers, cell=cell))


def gradient_norms(model: LanguageModel, stream: np.ndarray, max_k: int = 200, samples: int = 16,
                   seed: int = 0) -> list[float]:
    """‖∂L_t/∂h_{t−k}‖ for k = 0..max_k, the hidden states of all layers together, averaged over
    `samples` windows of the stream (chosen by `seed`) and divided by the value at k = 0.

    L_t is the next-character loss read from the top layer's state at the window's last step."""
    stream = np.asarray(stream, dtype=np.int64)
    if len(stream) < max_k + 3:
        raise UsageError(f"the text is too short for --max-k {max_k}: use a smaller one")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - max_k - 2) for _ in range(samples)]
    ids = torch.tensor(np.stack([stream[s:s + max_k + 2] for s in starts]))  # (B, T + 1)
    model = model.eval()
    totals = torch.zeros(max_k + 1, dtype=torch.float64)
    with torch.enable_grad():
        state, hidden = None, []
        for t in range(max_k + 1):
            _, state = model.rnn(model.embed(ids[:, t:t + 1]), state)
            h = _hidden(state)
            h.retain_grad()
            hidden.append(h)
        loss = F.cross_entropy(_top(model, hidden[-1][-1]), ids[:, max_k + 1], reduction="sum")
        loss.backward()
    for k in range(max_k + 1):
        grad = hidden[max_k - k].grad  # (L, B, H)
        totals[k] = grad.permute(1, 0, 2).reshape(len(starts), -1).norm(dim=1).mean()
    return (totals / totals[0]).tolist()


@dataclass
class Trace:
    """Every unit's activation after each input character: name → (T, units)."""

    tokens: list[str]
    series: dict[str, np.ndarray]


@torch.no_grad()
def trace(model: LanguageModel, ids: list[int], vocab: Vocab) -> Trace:
    """Run a token sequence one step at a time and record, per layer, h (and for an LSTM c and the
    input, forget and output gates and the candidate g)."""
    model = model.eval()
    cfg = model.config
    rnn = model.rnn
    x = model.embed(torch.tensor(ids))  # (T, E)
    series: dict[str, list] = {}
    for layer in range(cfg.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        h = torch.zeros(cfg.hidden_size)
        c = torch.zeros(cfg.hidden_size)
        outs = []
        for t in range(x.size(0)):
            if cfg.cell == "lstm":
                i, f, g, o = (w_ih @ x[t] + w_hh @ h + b).chunk(4)
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c = f * c + i * g
                h = o * c.tanh()
                for name, v in (("input gate", i), ("forget gate", f), ("output gate", o), ("cell", c)):
                    series.setdefault(f"{layer}:{name}", []).append(v.numpy().copy())
            elif cfg.cell == "gru":
                gi, gh = w_ih @ x[t] + getattr(rnn, f"bias_ih_l{layer}"), w_hh @ h + getattr(rnn, f"bias_hh_l{layer}")
                r = (gi[: cfg.hidden_size] + gh[: cfg.hidden_size]).sigmoid()
                z = (gi[cfg.hidden_size: 2 * cfg.hidden_size] + gh[cfg.hidden_size: 2 * cfg.hidden_size]).sigmoid()
                n = (gi[2 * cfg.hidden_size:] + r * gh[2 * cfg.hidden_size:]).tanh()
                h = (1 - z) * n + z * h
            else:
                h = (w_ih @ x[t] + w_hh @ h + b).tanh()
            series.setdefault(f"{layer}:hidden", []).append(h.numpy().copy())
            outs.append(h)
        x = torch.stack(outs)
    return Trace([vocab.tokens[i] for i in ids], {k: np.stack(v) for k, v in series.items()})


def as_read(vocab: Vocab, script: str | None, title: str, poem: str) -> tuple[str, str]:
    """A title and poem as the model reads them: whitespace dropped, ASCII marks made full-width, in the
    model's `script`; UsageError naming the characters outside its vocabulary."""
    poem = to_script("".join(full_width_marks(poem).split()), script)
    title = to_script("".join(title.split()), script)
    unknown = vocab.unknown(title + poem)
    if unknown:
        raise UsageError(f"not in the model's vocabulary: {' '.join(repr(c) for c in unknown)}: use other "
                         "characters")
    return title, poem


def body_activations(tr: Trace, unit: str) -> tuple[list[str], list[float]]:
    """The characters of the body (the tokens after <sep>) and `unit`'s activation after reading each."""
    values = unit_values(tr, unit)
    start = tr.tokens.index("<sep>") + 1
    return tr.tokens[start:], values[start:].tolist()


def record_ids(vocab: Vocab, title: str, body: str) -> list[int]:
    """The input tokens of a record, <bos> title <sep> body (the <eos> is never read)."""
    return vocab.encode_record(title, body)[:-1]


def properties(tokens: list[str]) -> dict[str, np.ndarray]:
    """Per input token of a record (<bos> title <sep> body), the verse properties --find looks for.
    NaN where a property does not apply (outside the body, or on marks)."""
    n = len(tokens)
    out = {p: np.full(n, np.nan) for p in PROPERTIES}
    sep = tokens.index("<sep>") if "<sep>" in tokens else n
    for t in range(1, n):
        out["title vs body"][t] = 1.0 if t < sep else 0.0
    body = tokens[sep + 1:]
    start = sep + 1
    line, col = 0, 0
    lines = split_lines("".join(body))
    for j, ch in enumerate(body):
        t = start + j
        if ch in LINE_END:
            line += 1
            col = 0
            continue
        out["position in line"][t] = col
        out["line number"][t] = line
        rest = next((m for m in range(j, len(body)) if body[m] in LINE_END), len(body))
        out["distance to punctuation"][t] = rest - j
        length = len(lines[line]) - 1 if line < len(lines) else 0
        out["rhyme position"][t] = 1.0 if (line % 2 == 1 and col == length - 1) else 0.0
        col += 1
    return out


def find_units(model: LanguageModel, vocab: Vocab, records: list[tuple[str, str]], top: int = 3,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """For each property, the units (any layer, hidden state, cell or gate) whose activation correlates
    best with it over the given poems: {property: [(unit, r), ...]} by |r|, strongest first.
    `progress(done, total)` hears each poem traced."""
    acts: dict[str, list[np.ndarray]] = {}
    props: dict[str, list[np.ndarray]] = {p: [] for p in PROPERTIES}
    for i, (title, body) in enumerate(records):
        if progress is not None:
            progress(i, len(records))
        tr = trace(model, record_ids(vocab, title, body), vocab)
        for name, values in tr.series.items():
            acts.setdefault(name, []).append(values)
        for p, values in properties(tr.tokens).items():
            props[p].append(values)
    if progress is not None:
        progress(len(records), len(records))
    if not acts:
        raise UsageError("no poems to search over: prepare the corpus (poetgen corpus prepare)")
    act = {k: np.concatenate(v) for k, v in acts.items()}
    result = {}
    for p in PROPERTIES:
        y = np.concatenate(props[p])
        mask = ~np.isnan(y)
        if mask.sum() < 3 or np.std(y[mask]) == 0:
            result[p] = []
            continue
        ys = (y[mask] - y[mask].mean()) / y[mask].std()
        scored = []
        for name, a in act.items():
            a = a[mask]
            std = a.std(0)
            r = np.where(std > 1e-8, ((a - a.mean(0)) * ys[:, None]).mean(0) / np.maximum(std, 1e-8), 0.0)
            for u in np.argsort(-np.abs(r))[:top]:
                scored.append((f"{name} {int(u)}", float(r[u])))
        result[p] = sorted(scored, key=lambda x: -abs(x[1]))[:top]
    return result


def unit_values(tr: Trace, unit: str) -> np.ndarray:
    """The activations of one unit, named 'LAYER:KIND INDEX' (e.g. '0:hidden 17', '1:forget gate 3')."""
    name, _, index = unit.rpartition(" ")
    if name not in tr.series or not index.isdigit() or int(index) >= tr.series[name].shape[1]:
        kinds = ", ".join(sorted(tr.series))
        raise UsageError(f"no unit {unit!r}: name one as 'LAYER:KIND INDEX' with KIND among {kinds}")
    return tr.series[name][:, int(index)]


def gate_means(model: LanguageModel, vocab: Vocab, records: list[tuple[str, str]], chars: int,
               layer: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Mean input/forget/output gate activations (over units and lines) at each position of lines of
    `chars` characters, and at the mark that ends the line (the last entry). `progress(done, total)`
    hears each poem traced."""
    if model.config.cell != "lstm":
        raise UsageError("gates are an LSTM's: pass an LSTM checkpoint")
    sums = {g: np.zeros(chars + 1) for g in ("input gate", "forget gate", "output gate")}
    counts = np.zeros(chars + 1)
    for i, (title, body) in enumerate(records):
        if progress is not None:
            progress(i, len(records))
        tr = trace(model, record_ids(vocab, title, body), vocab)
        sep = tr.tokens.index("<sep>")
        col = 0
        for t in range(sep + 1, len(tr.tokens)):
            ch = tr.tokens[t]
            pos = chars if ch in LINE_END else col
            if pos <= chars:
                for g in sums:
                    sums[g][pos] += tr.series[f"{layer}:{g}"][t].mean()
                counts[pos] += 1
            col = 0 if ch in LINE_END else col + 1
    if progress is not None:
        progress(len(records), len(records))
    if counts.min() == 0:
        raise UsageError(f"no lines of {chars} characters among the poems: choose another --chars")
    return {g: (s / counts).tolist() for g, s in sums.items()}
