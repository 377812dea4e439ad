"""A stacked recurrent language model over characters, regularized as in Zaremba et al. 2014:
dropout only on the non-recurrent connections (embeddings, between layers, output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError

CELLS = ("lstm", "gru", "rnn")


@dataclass
class LSTMConfig:
    """The shape of the model; stored in every checkpoint and used to rebuild it."""

    vocab_size: int
    emb_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    cell: str = "lstm"
    emb_dropout: float = 0.1  # on the embedding output (the first non-recurrent connection)
    dropout: float = 0.3  # between stacked layers and on the last layer's output
    tie_weights: bool = True

    def validate(self) -> LSTMConfig:
        """Raise UsageError for sizes or rates no model can have."""
        if self.cell not in CELLS:
            raise UsageError(f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        for name in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("emb_dropout", "dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{name.replace('_', '-')} must be in [0, 1), got {value}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self) -> dict:
        """What the weights depend on (everything but the dropout rates)."""
        return {k: v for k, v in asdict(self).items() if k not in ("emb_dropout", "dropout")}

    @classmethod
    def from_dict(cls, d: dict) -> LSTMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


PRESETS: dict[str, dict] = {
    # trains usefully on a laptop CPU in minutes
    "tiny": dict(emb_size=128, hidden_size=256, num_layers=2, emb_dropout=0.05, dropout=0.1),
    # the CPU default: 2 x 512
    "small": dict(emb_size=256, hidden_size=512, num_layers=2, emb_dropout=0.1, dropout=0.3),
    # the GPU reference: 2 x 1024, tied through a projection to 512
    "base": dict(emb_size=512, hidden_size=1024, num_layers=2, emb_dropout=0.1, dropout=0.5),
    "large": dict(emb_size=512, hidden_size=1536, num_layers=2, emb_dropout=0.15, dropout=0.6),
}

State = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None


class LanguageModel(nn.Module):
    """Embedding → stacked LSTM/GRU/tanh-RNN → (projection) → tied output layer."""

    def __init__(self, config: LSTMConfig):
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

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.head.bias)
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
                if self.config.cell == "lstm":  # forget-gate bias 1: remember by default
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
        y, state = self.rnn(self.emb_drop(self.embed(x)), state)
        y = self.out_drop(y)
        if self.proj is not None:
            y = self.proj(y)
        return y, state

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for token ids x (B, T), and the state to carry to the next window."""
        y, state = self.features(x, state)
        return self.head(y), state

    def loss(self, x: torch.Tensor, targets: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Mean next-token cross entropy in nats, and the new state."""
        logits, state = self(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return loss, state


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows, keep the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
