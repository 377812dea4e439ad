"""A stacked recurrent language model over characters, regularized as in Zaremba et al. 2014:
dropout only on the non-recurrent connections (embeddings, between layers, output); optionally with
AWD-LSTM's regularizers (Merity et al. 2017): locked (variational) dropout masks, whole-character
embedding dropout, and DropConnect on the hidden-to-hidden matrices.

The weights stay those of one nn.LSTM/GRU/RNN module (cuDNN on a GPU, the same checkpoint keys);
with locked dropout or weight drop the layers run one at a time through the same kernels, so a mask
can sit between them and a dropped matrix can stand in for a recurrent one."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import _VF  # the kernels behind nn.LSTM/GRU/RNN, called one layer at a time (see the docstring)

from .config import GATES, PRESETS, ModelConfig
from .device import cpu_lstm_has_bf16

__all__ = ["PRESETS", "LanguageModel", "ModelConfig", "NegativeSampler", "State", "detach_state"]

State = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None


class LanguageModel(nn.Module):
    """Embedding → stacked LSTM/GRU/tanh-RNN → (projection) → tied output layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.emb_size)
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]
        self.rnn = rnn_class(
            c.emb_size, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0
        )
        self.emb_drop = nn.Dropout(c.emb_dropout)
        self.out_drop = nn.Dropout(c.dropout)
        out_in = c.hidden_size
        self.proj = None
        if c.tie_weights and c.hidden_size != c.emb_size:
            self.proj = nn.Linear(c.hidden_size, c.emb_size)
            out_in = c.emb_size
        self.head = nn.Linear(out_in, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    @staticmethod
    def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The state dict's shapes for `config` without building a model (a checkpoint's check: no
        memory, no torch machinery; a test holds it to the real module's)."""
        c = config
        gates = GATES[c.cell] * c.hidden_size
        shapes: dict[str, tuple[int, ...]] = {"embed.weight": (c.vocab_size, c.emb_size)}
        for layer in range(c.num_layers):
            inputs = c.emb_size if layer == 0 else c.hidden_size
            shapes.update({f"rnn.weight_ih_l{layer}": (gates, inputs),
                           f"rnn.weight_hh_l{layer}": (gates, c.hidden_size),
                           f"rnn.bias_ih_l{layer}": (gates,), f"rnn.bias_hh_l{layer}": (gates,)})
        out_in = c.hidden_size
        if c.tie_weights and c.hidden_size != c.emb_size:
            shapes.update({"proj.weight": (c.emb_size, c.hidden_size), "proj.bias": (c.emb_size,)})
            out_in = c.emb_size
        shapes.update({"head.weight": (c.vocab_size, out_in), "head.bias": (c.vocab_size,)})
        return shapes

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.head.bias)
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
                if self.config.cell == "lstm":  # forget gate: 0.5 in each of bias_ih and bias_hh, 1 in all
                    h = self.config.hidden_size
                    with torch.no_grad():
                        p[h : 2 * h].fill_(0.5)
        if self.proj is not None:
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def features(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Last-layer features (B, T, E or H) for token ids x (B, T), and the new state."""
        c = self.config
        emb = self._embed(x)
        fp32_rnn = (c.cell == "lstm" and emb.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                    and not cpu_lstm_has_bf16())
        with torch.autocast("cpu", enabled=False) if fp32_rnn else contextlib.nullcontext():
            if fp32_rnn:  # this CPU has no bf16 LSTM kernel: the recurrence in fp32, the rest in bf16
                emb, state = emb.float(), None if state is None else tuple(s.float() for s in state)
            if self.training and (c.locked_dropout or c.weight_drop > 0):  # (the same function without dropout)
                y, state = self._layer_by_layer(self._drop(emb, c.emb_dropout), state)
            else:
                y, state = self.rnn(self.emb_drop(emb), state)
        y = self._drop(y, c.dropout) if c.locked_dropout else self.out_drop(y)
        if self.proj is not None:
            y = self.proj(y)
        return y, state

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, T, E), with whole characters dropped while training (one draw per window)."""
        emb = self.embed(x)
        p = self.config.char_dropout
        if self.training and p > 0:
            keep = emb.new_empty(self.config.vocab_size, 1).bernoulli_(1 - p) / (1 - p)
            emb = emb * keep[x]
        return emb

    def _drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Dropout on (B, T, C): with locked_dropout one mask per row, the same at every step."""
        if not self.training or p == 0:
            return x
        if not self.config.locked_dropout:
            return F.dropout(x, p, True)
        return x * (x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p))

    def _layer_by_layer(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """self.rnn's computation one layer at a time, dropout (locked or not) between layers and
        weight drop on each recurrent matrix while training."""
        c, rnn = self.config, self.rnn
        L, B = c.num_layers, x.size(0)
        lstm = c.cell == "lstm"
        if state is None:
            zeros = x.new_zeros(L, B, c.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        kernel = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn": _VF.rnn_tanh}[c.cell]
        hs, cs = [], []
        for layer in range(L):
            w_hh = getattr(rnn, f"weight_hh_l{layer}")
            if self.training and c.weight_drop > 0:
                w_hh = F.dropout(w_hh, c.weight_drop, True)
            weights = [getattr(rnn, f"weight_ih_l{layer}"), w_hh, getattr(rnn, f"bias_ih_l{layer}"),
                       getattr(rnn, f"bias_hh_l{layer}")]
            hx = (state[0][layer:layer + 1], state[1][layer:layer + 1]) if lstm else state[layer:layer + 1]
            out = kernel(x, hx, weights, True, 1, 0.0, self.training, False, True)
            x = out[0]
            hs.append(out[1])
            if lstm:
                cs.append(out[2])
            if layer < L - 1:
                x = self._drop(x, c.dropout)
        return x, ((torch.cat(hs), torch.cat(cs)) if lstm else torch.cat(hs))

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for token ids x (B, T), and the state to carry to the next window."""
        y, state = self.features(x, state)
        return self.head(y), state

    def loss(self, x: torch.Tensor, targets: torch.Tensor, state: State = None,
             negatives: NegativeSampler | None = None) -> tuple[torch.Tensor, State]:
        """Mean next-token cross entropy in nats, and the new state. With `negatives` (training only)
        the softmax runs over the batch's targets and sampled negatives instead of the vocabulary."""
        if negatives is None or not self.training:
            logits, state = self(x, state)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)), state
        y, state = self.features(x, state)
        targets = targets.reshape(-1)
        columns, correction, index = negatives.draw(targets)
        logits = F.linear(y.reshape(-1, y.size(-1)), self.head.weight[columns], self.head.bias[columns])
        return F.cross_entropy(logits.float() - correction, index), state


class NegativeSampler:
    """Sampled softmax for training (Jean et al. 2015), with the negatives shared by the whole batch.

    The softmax runs over a set of columns: every target of the batch plus `k` draws from the
    unigram distribution raised to the power 0.75. From each column's logit the log of its chance to
    be in the set is subtracted (0 for the targets, log(1 - (1 - q)^k) < 0 for a sampled negative,
    which stands for the columns not drawn), so the set's softmax estimates the full one. On this
    corpus a 64 x 64 batch holds ~1,300 distinct targets, and k = 1,024 gives ~1,570 columns of
    6,800: the output layer costs a quarter.
    Evaluation and sampling always use the full softmax."""

    POWER = 0.75

    def __init__(self, counts: torch.Tensor, k: int):
        q = (counts.double() + 1) ** self.POWER
        self.q = (q / q.sum()).float()
        self.k = k
        self.log_chance = torch.log(-torch.expm1(k * torch.log1p(-self.q.double()))).float()  # log(1-(1-q)^k)
        self._is_target = torch.zeros(len(q), dtype=torch.bool)

    def to(self, device: torch.device) -> NegativeSampler:
        self.q, self.log_chance, self._is_target = (t.to(device) for t in (self.q, self.log_chance, self._is_target))
        return self

    def draw(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(columns, their logit corrections, each target's position among the columns)."""
        drawn = torch.multinomial(self.q, self.k, replacement=True)
        columns = torch.unique(torch.cat([targets, drawn]))  # sorted
        self._is_target.zero_()
        self._is_target[targets] = True
        correction = torch.where(self._is_target[columns], 0.0, self.log_chance[columns])
        return columns, correction, torch.searchsorted(columns, targets)


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows, keep the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
