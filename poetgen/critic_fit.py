"""Making the critic of best-of-N and its usage weights (what tools/train_critic.py and tools/fit_usage.py
run): its training loop, the AUC it is chosen by, the weight of its term, and the usage weights fitted
by iterative scaling so that the picked poems hold common characters as often as poets' poems do."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .rerank import Critic, CriticConfig, critic_logits, encode_bodies
from .vocab import Vocab

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
