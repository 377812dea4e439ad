"""Reranking best-of-N candidates for meaning: a small critic that tells real poems from the
model's own samples, after Holtzman et al. 2018 ("Learning to Write with Cooperative Discriminators").

A candidate's score is its mean log-probability per character (the language model's own judgement of
fluency) plus `weight` times the critic's logit (how much it reads like a poem a poet wrote, rather
than one this model drew). The critic is a character CNN over the body: an embedding, three residual
convolutions (dilations 1, 2, 4: a window of 15 characters, two lines of a 七言), max- and mean-pooling
over the whole poem, and a two-layer head, so it can weigh features that co-occur anywhere in a poem
(two seasons, a place and a time that clash) as well as local ones (a broken phrase, an odd 叠字).

It is trained on real poems of the corpus's train split against candidates the shipped model drew at
the default settings; the epoch and the weight are chosen on the val split (see `fit` and
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

__all__ = ["Critic", "CriticConfig", "Reranker", "auc", "choose_weight", "chosen_shares", "encode_bodies", "fit",
           "fit_usage", "record_logprobs", "usage_shares"]

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


# ---------------------------------------------------------------------------------------------
# Making a critic (tools/train_critic.py runs the whole recipe)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def fit(vocab: Vocab, train: tuple[list[str], list[int]], val: tuple[list[str], list[int]],
        config: CriticConfig | None = None, epochs: int = 6, batch: int = 256, lr: float = 2e-3, seed: int = 0,
        on_epoch=None) -> tuple[Critic, dict]:
    """Train a critic on (bodies, labels: 1 real, 0 generated); keep the epoch of best val AUC.
    Classes are balanced by weighting the positives. `on_epoch(epoch, train_loss, val_auc)` reports."""
    torch.manual_seed(seed)
    critic = Critic(config or CriticConfig(vocab_size=len(vocab)))
    bodies, labels = train
    tokens, lengths = encode_bodies(vocab, bodies)
    y = torch.tensor(labels, dtype=torch.float32)
    pos_weight = (len(y) - y.sum()) / y.sum().clamp(min=1)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(y) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, None, 0)
    history = []
    for epoch in range(1, epochs + 1):
        critic.train()
        total, count = 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            width = int(lengths[idx].max())
            logits = critic(tokens[idx, :width], lengths[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        val_auc = auc(critic_logits(critic, vocab, val[0]).numpy(), np.array(val[1]))
        history.append({"epoch": epoch, "train_loss": round(total / count, 4), "val_auc": round(val_auc, 4)})
        if on_epoch is not None:
            on_epoch(epoch, total / count, val_auc)
        if val_auc > best[0]:
            best = (val_auc, {k: v.clone() for k, v in critic.state_dict().items()}, epoch)
    critic.load_state_dict(best[1])
    return critic.eval(), {"epoch": best[2], "val_auc": round(best[0], 4), "history": history}


@torch.no_grad()
def record_logprobs(model, vocab: Vocab, records: list[tuple[str, str]], batch: int = 256) -> list[float]:
    """Each record's body log-probability per character (the end token counted), given its title: the
    figure the sampler ranks by, under the full model at temperature 1 (eval mode)."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(records), batch):
        seqs = [vocab.encode_record(title, body) for title, body in records[i:i + batch]]
        width = max(len(s) for s in seqs)
        x = torch.full((len(seqs), width), vocab.eos_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, :len(s)] = torch.tensor(s)
        logits, _ = model(x[:, :-1])  # (B, T-1, V)
        logp = logits.float().log_softmax(-1).gather(2, x[:, 1:, None]).squeeze(2)  # (B, T-1)
        for r, s in enumerate(seqs):
            start = s.index(vocab.sep_id)  # the first body token is predicted at the <sep>
            out.append(float(logp[r, start:len(s) - 1].sum()) / (len(s) - 1 - start))
    return out


def choose_weight(mean_logprobs: np.ndarray, critic: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                  grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
                  ) -> tuple[float, dict]:
    """The weight of the critic that best ranks real poems above generated ones (mean AUC within each
    group, e.g. a form), as Holtzman et al. choose theirs; ties go to the smaller weight."""
    table = {}
    for w in grid:
        s = mean_logprobs + w * critic
        table[w] = float(np.mean([auc(s[groups == g], labels[groups == g]) for g in np.unique(groups)]))
    best = max(grid, key=lambda w: (round(table[w], 4), -w))
    return best, {str(w): round(a, 4) for w, a in table.items()}


# ---------------------------------------------------------------------------------------------
# The usage table: which characters the chosen poems hold, at poets' rates

USAGE_MIN_SHARE = 0.03  # a character gets a usage weight when at least this share of a form's real poems hold it
USAGE_LIMIT = 3.0  # |weight| at most this (the critic's term spans about ±15 at weight 5)
USAGE_MAX_ABS = 100.0  # a stored weight beyond this is damage, not a fit: the file is refused


def usage_shares(bodies: list[str]) -> dict[str, float]:
    """The share of `bodies` that hold each Han character (at least once)."""
    from collections import Counter

    from .text import is_han

    held = Counter(c for body in bodies for c in {ch for ch in body if is_han(ch)})
    return {c: n / len(bodies) for c, n in held.items()} if bodies else {}


def fit_usage(pools: list[tuple[list[str], list[float]]], real: dict[str, float],
              min_share: float = USAGE_MIN_SHARE, iterations: int = 20, step: float = 0.5,
              limit: float = USAGE_LIMIT) -> dict[str, float]:
    """Usage weights for best-of-N: `pools` are the candidates of many poems, each with its score
    without usage (bodies, scores); `real` is the share of real poems of the form that hold each
    character (usage_shares). The characters of share >= min_share get a weight, added to a candidate's
    score when it holds them, such that the best candidate of each pool holds each of them in about
    the share real poems do (iterative scaling: w += step · log(real share / chosen share), clipped to
    ±limit). A critic taught on the model's own samples penalizes what those overuse, and choosing the
    best of N by it overshoots: the chosen poems drop words poets use every day (不 一 知 何); these
    weights bring the chosen poems' words back to poets' shares."""
    if any(len(bodies) != len(scores) for bodies, scores in pools):
        raise ValueError("each pool needs one score per candidate")
    pools = [pool for pool in pools if pool[0]]
    chars = sorted((c for c, share in real.items() if share >= min_share), key=lambda c: (-real[c], c))
    if not chars or not pools:
        return {}
    index = {c: i for i, c in enumerate(chars)}
    width = max(len(bodies) for bodies, _ in pools)
    base = np.full((len(pools), width), -np.inf)
    held = np.zeros((len(pools), width, len(chars)))
    for p, (bodies, scores) in enumerate(pools):
        base[p, :len(scores)] = scores
        for j, body in enumerate(bodies):
            for c in set(body):
                if c in index:
                    held[p, j, index[c]] = 1.0
    target = np.array([real[c] for c in chars])
    weights = np.zeros(len(chars))
    rows = np.arange(len(pools))
    for _ in range(iterations):
        chosen = held[rows, (base + held @ weights).argmax(1)].mean(0)
        weights = np.clip(weights + step * np.log(target / np.maximum(chosen, 1 / (2 * len(pools)))), -limit, limit)
    return {c: round(float(w), 4) for c, w in zip(chars, weights, strict=True) if w != 0.0}


def chosen_shares(pools: list[tuple[list[str], list[float]]], usage: dict[str, float]) -> dict[str, float]:
    """The share of the pools' best candidates (by score plus `usage`) that hold each Han character."""
    best = [max(zip(bodies, scores, strict=True), key=lambda bs: bs[1] + sum(usage.get(c, 0.0) for c in set(bs[0])))[0]
            for bodies, scores in pools if bodies]
    return usage_shares(best)
