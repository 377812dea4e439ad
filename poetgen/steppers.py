"""Token-at-a-time inference for sampling: the fp32 Stepper and the int8 path a CPU samples through.

Both compute an LSTM's gates in (i, f, o, g) order (gate_order), so a step is one sigmoid and one tanh;
other cells step through the module itself."""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import LanguageModel, State

__all__ = ["Int8LanguageModel", "Int8Stepper", "Stepper", "gate_order", "int8_available"]


def gate_order(hidden_size: int) -> torch.Tensor:
    """The rows of nn.LSTM's gate matrices, (i, f, g, o), reordered to (i, f, o, g)."""
    H = hidden_size
    return torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])


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
        order = gate_order(H)
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
        order = gate_order(H)
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
