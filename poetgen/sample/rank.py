"""Ranking best-of-N: a candidate's score (mean log-probability, plus the critic and usage terms of the
model's Reranker), the cuts that drop the weaker candidates of a whole-poem search as they go (CUTS),
the line search's choice of the rows that go on (resampled), and the pick."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..rerank import Reranker
from ..vocab import Vocab
from .request import SampleOptions

# Best-of-N of CUT_MIN or more candidates in a fixed form prunes as it goes: when a quarter, half and
# three quarters of the lines are written, only the best 3/4, 1/2 and 3/8 of each poem's candidates
# (by the score of their lines so far) go on; at best of 8 that is 6, 4 and 3, 5.2 rows per poem on
# average instead of 8. SampleOptions.prune (`--no-prune`) writes every candidate to the end.
CUT_MIN = 4
CUTS = ((1 / 4, 3 / 4), (1 / 2, 1 / 2), (3 / 4, 3 / 8))  # (share of the lines written, share of candidates kept)


@dataclass
class GeneratedPoem:
    title: str
    body: str
    logprob: float  # under the unconstrained model at temperature 1: the body and its end, given the title
    lines: list[str] = field(default_factory=list)
    score: float = 0.0  # what best-of-N ranks by: logprob per character (the end token counted), plus the
    # critic's term when the generator has a reranker (rerank.Reranker)
    candidates: int = 1  # how many were drawn for it
    seed: int | None = None  # the request's seed and the poem's index in it: together they make it again
    index: int | None = None
    plan: list[str] | None = None  # the keywords the model planned, one a line (a model with plans)

    def __str__(self) -> str:
        """The poem as `poetgen sample` writes it: the title in 《》, then one line per verse line."""
        return (f"《{self.title}》\n" if self.title else "") + "\n".join(self.lines)


def pruned(opts: SampleOptions, candidates: int) -> bool:
    """Whether best-of-`candidates` under these options prunes as it goes (CUTS): a whole-poem search."""
    return opts.search == "poem" and opts.prune and opts.form is not None and candidates >= CUT_MIN


def score(logprob: float, body: str) -> float:
    """The reranking score: mean log-probability per character, the end token counted. Repetition is
    weighed while drawing, by the rules of verse (masks.SECOND_USE_WEIGHT), not here."""
    return logprob / (len(body) + 1)


def _order_so_far(vocab: Vocab, reranker: Reranker | None, columns: list[torch.Tensor], logprob: torch.Tensor,
                  each: int, form_key: str) -> torch.Tensor:
    """Each poem's `each` consecutive rows, best first by the score of the lines written so far (the
    reranker's, or log-probability per character; ties: the earlier row first): (poems, each)."""
    written = ["".join(vocab.tokens[t] for t in row) for row in torch.stack(columns, 1).tolist()]
    scores = [score(float(lp), body) for lp, body in zip(logprob, written, strict=True)]
    if reranker is not None:
        scores = reranker.scores(written, scores, form_key)
    by_poem = torch.tensor(scores, dtype=torch.float64).view(-1, each)  # as exact as the final pick's
    return torch.sort(by_poem, dim=1, descending=True, stable=True).indices


def best_so_far(vocab: Vocab, reranker: Reranker | None, columns: list[torch.Tensor], logprob: torch.Tensor,
                each: int, keep: int, form_key: str) -> torch.Tensor:
    """The rows to keep of `each` consecutive rows per poem: each poem's `keep` best by the score of
    the lines written so far (the reranker's, or log-probability per character), in row order."""
    order = _order_so_far(vocab, reranker, columns, logprob, each, form_key)
    best = order[:, :keep].sort(dim=1).values
    return (best + torch.arange(order.size(0))[:, None] * each).flatten()


def resampled(vocab: Vocab, reranker: Reranker | None, columns: list[torch.Tensor], logprob: torch.Tensor,
              each: int, form_key: str) -> torch.Tensor:
    """Line search: for each poem's `each` consecutive rows, the row each continues from: its better
    half (each // 2, at least one) by the score of the lines written so far, repeated in turn, the best
    first, to fill the `each` rows."""
    order = _order_so_far(vocab, reranker, columns, logprob, each, form_key)
    parents = order[:, torch.arange(each) % max(1, each // 2)]
    return (parents + torch.arange(order.size(0))[:, None] * each).flatten()


def pick(candidates: list[GeneratedPoem], poems: int, best_of: int, reranker: Reranker | None,
         form_key: str | None) -> list[GeneratedPoem]:
    """The best candidate of each poem (consecutive, as many a poem), by score: with the reranker's
    terms added in a fixed form when more than one was drawn (best_of > 1)."""
    if reranker is not None and best_of > 1 and form_key is not None:
        scores = reranker.scores([c.body for c in candidates], [c.score for c in candidates], form_key)
        for c, s in zip(candidates, scores, strict=True):
            c.score = s
    each = len(candidates) // poems
    return [max(candidates[p * each:(p + 1) * each], key=lambda c: c.score) for p in range(poems)]
