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

from .config import PRESETS, ModelConfig
from .device import cpu_lstm_has_bf16

__all__ = ["PRESETS", "Int8LanguageModel", "Int8Stepper", "LanguageModel", "ModelConfig", "NegativeSampler", "State",
           "Stepper", "detach_state", "int8_available"]

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
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[c.cell] * c.hidden_size
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


def _lstm_update(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM cell from pre-activation gates (B, 4H) in (i, f, o, g) order, in place on `gates`:
    the new hidden and cell states."""
    H = gates.size(1) // 4
    gates[:, :3 * H].sigmoid_()
    gates[:, 3 * H:].tanh_()
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.addcmul(f.mul_(c), i, g)  # in place where it can: a fresh (B, H) costs page faults at large B
    return torch.tanh(c).mul_(o), c


class Stepper:
    """Token-at-a-time inference without per-call module overhead.

    For an LSTM, the first layer's input gates of every token are precomputed into a table (an
    embedding lookup replaces a matrix product) and each step is a few fused addmm calls; other
    cells fall back to the module."""

    def __init__(self, model: LanguageModel):
        self.model = model.eval()
        self.device = next(model.parameters()).device  # the model's; token ids come and logits go on the CPU
        cfg = model.config
        self.fast = cfg.cell == "lstm"
        if not self.fast:
            return
        rnn = model.rnn
        H = cfg.hidden_size
        # gates reordered from nn.LSTM's (i, f, g, o) to (i, f, o, g): one sigmoid, one tanh per step
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        with torch.no_grad():
            emb = model.embed.weight
            self.table0 = (emb @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0)[:, order].contiguous()  # (V, 4H)
            self.w_hh0 = rnn.weight_hh_l0[order].T.contiguous()  # (H, 4H)
            self.w_cat, self.b_cat = [], []
            for layer in range(1, cfg.num_layers):
                w = torch.cat([getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")], dim=1)
                self.w_cat.append(w[order].T.contiguous())  # (2H, 4H)
                self.b_cat.append((getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}"))[order])
            self.proj = (model.proj.weight.T.contiguous(), model.proj.bias) if model.proj is not None else None
            self.head_w = model.head.weight.T.contiguous()  # (E, V)
            self.head_b = model.head.bias

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Run a (B, T) prefix through the model: logits of the last position (B, V) and the state."""
        logits, state = self.model(ids.to(self.device))
        if self.fast:
            h, c = state
            state = [(h[i], c[i]) for i in range(h.size(0))]
        return logits[:, -1].float().cpu(), state

    def expand(self, state, rows: int):
        """Repeat a batch-1 state for `rows` rows."""
        if self.fast:
            return [(h.expand(rows, -1).contiguous(), c.expand(rows, -1).contiguous()) for h, c in state]
        if isinstance(state, tuple):
            return tuple(s.expand(-1, rows, -1).contiguous() for s in state)
        return state.expand(-1, rows, -1).contiguous()

    def select(self, state, rows: torch.Tensor):
        """The state of the given rows (a LongTensor of row indexes, repeats allowed)."""
        rows = rows.to(self.device)
        if self.fast:
            return [(h[rows], c[rows]) for h, c in state]
        if isinstance(state, tuple):
            return tuple(s[:, rows] for s in state)
        return state[:, rows]

    @torch.inference_mode()
    def put(self, dest, rows: torch.Tensor, src, which: torch.Tensor) -> None:
        """Write the state of rows `which` of `src` into rows `rows` of `dest`, in place."""
        rows, which = rows.to(self.device), which.to(self.device)
        if self.fast:
            for (hd, cd), (hs, cs) in zip(dest, src, strict=True):
                hd[rows], cd[rows] = hs[which], cs[which]
        elif isinstance(dest, tuple):
            for d, s in zip(dest, src, strict=True):
                d[:, rows] = s[:, which]
        else:
            dest[:, rows] = src[:, which]

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One token per row, ids (B,): next-token logits (B, V, fp32 on the CPU) and the new state."""
        ids = ids.to(self.device)
        if not self.fast:
            logits, state = self.model(ids[:, None], state)
            return logits[:, 0].float().cpu(), state
        new_state = []
        h, c = state[0]
        gates = torch.addmm(self.table0[ids], h, self.w_hh0)
        x = None
        for layer in range(len(state)):
            if layer > 0:
                h, c = state[layer]
                gates = torch.addmm(self.b_cat[layer - 1], torch.cat([x, h], dim=1), self.w_cat[layer - 1])
            x, c = _lstm_update(gates, c)
            new_state.append((x, c))
        if self.proj is not None:
            x = torch.addmm(self.proj[1], x, self.proj[0])
        return torch.addmm(self.head_b, x, self.head_w).float().cpu(), new_state


# The int8 kernels' inputs, quantized with this fixed scale and zero point to unsigned integers 0 … 128
# (a 7-bit range, so x86 kernels without VNNI cannot saturate their 16-bit sums: 128 · 127 · 2 < 32,767):
# hidden states as they are (an LSTM's lie in (-1, 1)), other inputs each row scaled into [-1, 1] by its
# own largest value first (_scaled). Unlike dynamic quantization (one scale for the whole batch), a
# row's result never depends on the other rows: the integer sums are exact, so a row is computed bit
# for bit the same alone or among 800, and a poem does not depend on what is drawn beside it.
INT8_INPUT_SCALE, INT8_INPUT_ZERO = 2 / 127, 64


def _quantize(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) as int8 with one scale per output row (symmetric)."""
    import warnings

    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; the ops are not
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(w, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None = None):
    """`weight` (out, in) quantized by _quantize and packed for fbgemm's int8 kernels; the bias stays fp32."""
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        return torch.ops.quantized.linear_prepack(_quantize(weight), None if bias is None else bias.detach().float())
    finally:
        torch.backends.quantized.engine = previous


def _bounded(x: torch.Tensor, packed) -> torch.Tensor:
    """The packed product of x, whose values lie in [-1, 1], in fp32."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, INT8_INPUT_SCALE, INT8_INPUT_ZERO,
                                                                             packed)


def _scaled(x: torch.Tensor, packed, bias: torch.Tensor | None) -> torch.Tensor:
    """The packed product (packed without bias) of any x (B, in), plus the bias: each row scaled into
    [-1, 1] by its largest value on the way in and back on the way out (the product is linear)."""
    top = torch.maximum(x.amax(1, keepdim=True), x.amin(1, keepdim=True).neg_()).clamp_min_(1e-30)  # max |x|
    out = _bounded(x * top.reciprocal(), packed)  # (fewer passes over a large batch than abs, div, mul, add)
    return out.mul_(top) if bias is None else torch.addcmul(bias, out, top, out=out)  # in place: no new (B, out)


def int8_available() -> bool:
    """Whether this torch build has the int8 kernels the int8 path needs (fbgemm, on x86); elsewhere
    sampling stays in fp32."""
    return ("fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"))


class Int8Stepper(Stepper):
    """The Stepper's LSTM step with int8 weights, the path `sample` takes on a CPU.

    Every matrix product of a step (hidden-to-hidden, the upper layers' input, projection, output)
    multiplies int8 weights with one scale per output row (fbgemm) by inputs quantized to 7 bits
    (INT8_INPUT_SCALE): hidden states directly, the output layer's input (and the embeddings that fill
    the first layer's table) each row by its own scale.
    The first layer's input gates come from a table filled one character at a time, the first time it
    is read, by the same int8 product. At batch 1 a step reads a quarter of the fp32 bytes. Each row
    is computed the same whatever the other rows; `poetgen eval --int8` reports the path's perplexity."""

    def __init__(self, model: LanguageModel):
        if model.config.cell != "lstm" or not int8_available():
            raise ValueError("the int8 path needs an LSTM and fbgemm's int8 kernels")
        self.model = model.eval()
        self.fast = True
        self.device = torch.device("cpu")
        rnn, cfg = model.rnn, model.config
        H = cfg.hidden_size
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        with torch.no_grad():
            self.embed = model.embed.weight.detach().float()
            self.b0 = (rnn.bias_ih_l0 + rnn.bias_hh_l0)[order]
            self.ih0 = _int8_linear(rnn.weight_ih_l0[order])  # gates (i, f, o, g)
            self.table0 = torch.empty(cfg.vocab_size, 4 * H)  # filled on first use (pages untouched till then)
            self.filled = torch.zeros(cfg.vocab_size, dtype=torch.bool)
            self.layers = [_int8_linear(rnn.weight_hh_l0[order])]  # layer 0's biases are in the table
            for layer in range(1, cfg.num_layers):
                w = torch.cat([getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")], 1)
                b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
                self.layers.append(_int8_linear(w[order], b[order]))  # input [x, h]: (2H) → 4H
            self.proj = _int8_linear(model.proj.weight, model.proj.bias) if model.proj is not None else None
            self.head = _int8_linear(model.head.weight)
            self.head_b = model.head.bias.detach().float()

    def input_gates(self, ids: torch.Tensor) -> torch.Tensor:
        """The first layer's input gates plus both biases, (B, 4H), from the table."""
        filled = self.filled.index_select(0, ids)  # (index_select: a third of indexing's cost at batch 1)
        if not bool(filled.all()):
            new = ids[~filled].unique()
            self.table0[new] = _scaled(self.embed[new], self.ih0, self.b0)
            self.filled[new] = True
        return self.table0.index_select(0, ids)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        """A (B, T) prefix one token at a time through the int8 step: logits of the last position and the state."""
        state = self.zero_state(ids.size(0))
        for t in range(ids.size(1)):
            logits, state = self.step(ids[:, t], state)
        return logits, state

    def zero_state(self, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        H = self.model.config.hidden_size
        return [(torch.zeros(rows, H), torch.zeros(rows, H)) for _ in range(self.model.config.num_layers)]

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One token per row, ids (B,): next-token logits (B, V) and the new state."""
        new_state, x = [], None
        for layer, (h, c) in enumerate(state):  # hidden states lie in (-1, 1): no per-row scale needed
            if layer == 0:
                gates = self.input_gates(ids).add_(_bounded(h, self.layers[0]))  # (B, 4H)
            else:
                gates = _bounded(torch.cat([x, h], 1), self.layers[layer])
            x, c = _lstm_update(gates, c)
            new_state.append((x, c))
        if self.proj is not None:
            x = _bounded(x, self.proj)
        return _scaled(x, self.head, self.head_b), new_state


class Int8LanguageModel(nn.Module):
    """`LanguageModel.forward` computed by the int8 step, token by token, for evaluating the sampling
    path under the one validation protocol (state in nn.LSTM's (L, B, H) layout, as windows carry it)."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.config = model.config
        self.stepper = Int8Stepper(model)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        rows = (self.stepper.zero_state(x.size(0)) if state is None
                else [(state[0][i], state[1][i]) for i in range(state[0].size(0))])
        logits = []
        for t in range(x.size(1)):
            step_logits, rows = self.stepper.step(x[:, t], rows)
            logits.append(step_logits)
        return torch.stack(logits, 1), (torch.stack([h for h, _ in rows]), torch.stack([c for _, c in rows]))
