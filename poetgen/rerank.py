"""Reranking best-of-N candidates for meaning: a small critic that tells real poems from the
model's own samples, after Holtzman et al. 2018 ("Learning to Write with Cooperative Discriminators").

A candidate's score is its mean log-probability per character (the language model's own judgement of
fluency) plus `weight` times the critic's logit (how much it reads like a poem a poet wrote, rather
than one this model drew). The critic is a character CNN over the body: an embedding, three residual
convolutions (dilations 1, 2, 4: a window of 15 characters, two lines of a 七言), max- and mean-pooling
over the whole poem, and a two-layer head, so it can weigh features that co-occur anywhere in a poem
(two seasons, a place and a time that clash) as well as local ones (a broken phrase, an odd 叠字).

It is trained on real poems of the corpus's train split against candidates the shipped model drew at
the default settings; the epoch and the weight are chosen on the val split (critic_fit.py: `fit` and
`choose_weight`). The critic ships inside the model's checkpoint (its `rerank` entry), so a model and
its critic cannot be separated; a checkpoint without one ranks by log-probability alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .forms import FORMS
from .vocab import Vocab

__all__ = ["Critic", "CriticConfig", "Reranker", "critic_logits", "encode_bodies"]

MAX_BODY = 128  # characters of a body the critic reads (a 七律 is 64 with its marks)


@dataclass
class CriticConfig:
    vocab_size: int
    dim: int = 64  # embedding width
    channels: int = 128  # convolution channels
    hidden: int = 128  # the head's hidden layer
    dropout: float = 0.2

    @classmethod
    def from_dict(cls, d: dict) -> CriticConfig:
        fields = {k: d[k] for k in ("vocab_size", "dim", "channels", "hidden", "dropout") if k in d}
        config = cls(**fields)
        if not all(isinstance(getattr(config, k), int) and getattr(config, k) > 0
                   for k in ("vocab_size", "dim", "channels", "hidden")):
            raise ValueError("critic config: sizes must be positive integers")
        return config


class Critic(nn.Module):
    """Body tokens (B, T) and their lengths (B,) → a logit per body: > 0 reads as real."""

    def __init__(self, config: CriticConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.conv_in = nn.Conv1d(c.dim, c.channels, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv1d(c.channels, c.channels, 3, padding=d, dilation=d) for d in (2, 4))
        self.drop = nn.Dropout(c.dropout)
        self.hidden = nn.Linear(2 * c.channels, c.hidden)
        self.out = nn.Linear(c.hidden, 1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(tokens.size(1)) < lengths[:, None]).unsqueeze(1)  # (B, 1, T)
        x = self.drop(self.embed(tokens)).transpose(1, 2)  # (B, dim, T)
        h = F.relu(self.conv_in(x)) * mask
        for conv in self.convs:
            h = h + F.relu(conv(h)) * mask
        pooled_max = h.masked_fill(~mask, float("-inf")).amax(2)  # (B, C)
        pooled_mean = h.sum(2) / lengths[:, None].clamp(min=1)
        z = self.drop(torch.cat([pooled_max, pooled_mean], 1))
        return self.out(F.relu(self.hidden(z))).squeeze(1)  # (B,)


def encode_bodies(vocab: Vocab, bodies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bodies as a right-padded (B, T) id tensor and their lengths (cut at MAX_BODY characters)."""
    ids = [vocab.encode(b[:MAX_BODY]) for b in bodies]
    lengths = torch.tensor([max(1, len(x)) for x in ids])
    tokens = torch.full((len(ids), int(lengths.max()) if ids else 1), vocab.eos_id, dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return tokens, lengths


@torch.no_grad()
def critic_logits(critic: Critic, vocab: Vocab, bodies: list[str], batch: int = 1024) -> torch.Tensor:
    """The critic's logit for each body (eval mode), in batches."""
    critic.eval()
    out = []
    for i in range(0, len(bodies), batch):
        out.append(critic(*encode_bodies(vocab, bodies[i:i + batch])))
    return torch.cat(out) if out else torch.zeros(0)


class Reranker:
    """The scorer of best-of-N: mean log-probability per character + weight × critic logit, plus, in a
    form with a usage table, the usage weight of each table character the poem holds (see fit_usage)."""

    def __init__(self, critic: Critic, vocab: Vocab, weight: float, figures: dict | None = None,
                 usage: dict[str, dict[str, float]] | None = None):
        self.critic, self.vocab, self.weight = critic.eval(), vocab, float(weight)
        self.figures = figures or {}
        self.usage = usage or {}  # {form key: {character: weight}}

    def scores(self, bodies: list[str], mean_logprobs: list[float], form: str | None = None) -> list[float]:
        """Each candidate's score (higher is better); `form` (a form key) picks the usage table."""
        logits = critic_logits(self.critic, self.vocab, bodies)
        table = self.usage.get(form, {})
        return [lp + self.weight * float(z) + sum(table.get(c, 0.0) for c in set(body))
                for lp, z, body in zip(mean_logprobs, logits, bodies, strict=True)]

    def to_payload(self) -> dict:
        """What a checkpoint stores under `rerank` (fp16 weights: a few MB at most)."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.critic.state_dict().items()}
        payload = {"kind": "critic", "config": asdict(self.critic.config), "state_dict": state,
                   "weight": self.weight, "figures": self.figures}
        if self.usage:
            payload["usage"] = self.usage
        return payload

    @classmethod
    def from_payload(cls, payload: dict, vocab: Vocab) -> Reranker:
        """A reranker from a checkpoint's `rerank` entry; ValueError when it does not fit `vocab`."""
        if not isinstance(payload, dict) or payload.get("kind") != "critic":
            raise ValueError("its rerank entry is not a critic")
        if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
            raise ValueError("its critic has no config or weights")
        weight = payload.get("weight")
        if not _finite_number(weight) or weight < 0:
            raise ValueError("its critic weight is not a finite number ≥ 0")
        usage = payload.get("usage")
        if usage is not None and not (isinstance(usage, dict) and all(
                form in FORMS and isinstance(table, dict)
                and all(isinstance(c, str) and len(c) == 1 and _finite_number(w) and abs(w) <= USAGE_MAX_ABS
                        for c, w in table.items())
                for form, table in usage.items())):
            raise ValueError("its usage table is malformed")
        config = CriticConfig.from_dict(payload["config"])
        if config.vocab_size != len(vocab):
            raise ValueError("its critic was made for another vocabulary")
        critic = Critic(config)
        state = payload["state_dict"]
        try:
            critic.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except (RuntimeError, AttributeError):
            raise ValueError("its critic's weights do not fit its config") from None
        if not all(torch.isfinite(p).all() for p in critic.parameters()):
            raise ValueError("its critic's weights are not finite")
        figures = payload.get("figures") if isinstance(payload.get("figures"), dict) else {}
        return cls(critic, vocab, float(weight), figures,
                   {form: {c: float(w) for c, w in table.items()} for form, table in (usage or {}).items()})


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


USAGE_MAX_ABS = 100.0  # a stored weight beyond this is damage, not a fit: the file is refused
