"""Drawing the next token of every row: temperature, top-k and top-p over the tokens the masks allow,
with random numbers from one stream per poem (Streams), so a poem never depends on its neighbours."""

from __future__ import annotations

import hashlib

import torch

from .request import SampleOptions


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the top-k tokens and/or the smallest set whose probability reaches top_p (per row)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop[:, 0] = False  # and always the likeliest (a tiny top_p rounds to 0 in float32)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


EXP_SAFE = 60.0  # log-normalizers within ±this: exp needs no max-shift in float32 (overflow at 88)
DRAW_BLOCK = 64  # columns summed together in draw's first level


def poem_seed(seed: int, index: int) -> int:
    """The seed of poem `index` of a request seeded `seed` (64 bits, well mixed)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little")


class Streams:
    """Random numbers, one stream per poem, seeded by the request's seed and the poem's index: a poem
    never depends on the poems drawn beside it (the first poem of --num 2 is the poem of --num 1, and
    poem i of any run is poem i of a run with --num i+1). `owner[r]` is the stream of row r."""

    def __init__(self, gens: list[torch.Generator], owner: list[int], kept: torch.Tensor | None = None):
        self.gens, self.owner = gens, owner
        self.kept = kept  # the rows that still draw (see keep); None: all
        self._runs: list[tuple[torch.Generator, int]] = []  # consecutive rows of one stream
        for r, o in enumerate(owner):
            if r and owner[r - 1] == o:
                self._runs[-1] = (self._runs[-1][0], self._runs[-1][1] + 1)
            else:
                self._runs.append((gens[o], 1))

    @classmethod
    def for_poems(cls, seed: int, first: int, poems: int) -> Streams:
        """The streams of poems first … first + poems - 1, one row each."""
        gens = [torch.Generator().manual_seed(poem_seed(seed, first + p)) for p in range(poems)]
        return cls(gens, list(range(poems)))

    def rows(self, rows: list[int]) -> Streams:
        """The same streams for a subset of the rows (their owners, in this order), drawing for those
        rows only; once rows were dropped (keep), for all rows still, as keep does."""
        if self.kept is not None:
            return self.keep(torch.tensor(rows, dtype=torch.long))
        return Streams(self.gens, [self.owner[r] for r in rows])

    def keep(self, rows: torch.Tensor) -> Streams:
        """The streams of these rows only (indexes into the current rows), each stream still drawing for
        all its rows: a kept row gets the numbers it would have got had no row been dropped."""
        return Streams(self.gens, self.owner, rows if self.kept is None else self.kept[rows])

    def per_row(self, repeat: int) -> Streams:
        """Each row's stream owning `repeat` consecutive rows (a poem's best-of-N candidates)."""
        return Streams(self.gens, [o for o in self.owner for _ in range(repeat)])

    def uniform(self) -> torch.Tensor:
        """One number in [0, 1) per row (B,), each from its row's stream."""
        u = torch.cat([torch.rand(n, generator=g) for g, n in self._runs])
        return u if self.kept is None else u[self.kept]


def draw(weights: torch.Tensor, gen: torch.Generator | Streams | torch.Tensor) -> torch.Tensor:
    """One token per row from weights (B, V), probabilities or unnormalized, by inverse CDF in two
    levels (a block of DRAW_BLOCK columns, then a column in it): one pass over (B, V) instead of a
    cumulative sum, and much faster on CPU than torch.multinomial. The random numbers come from
    `gen`, from each row's stream, or are given (a tensor of B numbers in [0, 1)). A row with no
    weight gives a token of weight 0 (the caller checks)."""
    B, V = weights.shape
    n = V // DRAW_BLOCK
    weights = weights.contiguous()
    block_sums = weights.as_strided((B, n, DRAW_BLOCK), (V, DRAW_BLOCK, 1)).sum(-1)
    if V > n * DRAW_BLOCK:
        block_sums = torch.cat([block_sums, weights[:, n * DRAW_BLOCK:].sum(-1, keepdim=True)], dim=1)
    block_cdf = block_sums.cumsum(-1)
    u = (gen if isinstance(gen, torch.Tensor) else torch.rand(B, generator=gen) if isinstance(gen, torch.Generator)
         else gen.uniform())[:, None]
    target = u.to(block_cdf.dtype) * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.size(1) - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    cols = block * DRAW_BLOCK + torch.arange(DRAW_BLOCK)  # (B, DRAW_BLOCK); past V only in the last block
    inside = torch.where(cols < V, weights.gather(1, cols.clamp(max=V - 1)), 0.0)
    at = torch.searchsorted(inside.cumsum(-1), target - before, right=True).clamp_(max=DRAW_BLOCK - 1)
    choice = cols.gather(1, at).squeeze(1).clamp_(max=V - 1)
    zero = weights.gather(1, choice[:, None]).squeeze(1) <= 0  # by rounding at the edge of a block
    if bool(zero.any()):
        choice[zero] = weights[zero].argmax(-1)
    return choice


def _combine(masks: list[torch.Tensor], rows: int, out: torch.Tensor) -> torch.Tensor:
    """The product of float 0/1 masks, each (V,) or (rows, V)."""
    if len(masks) == 1:
        return masks[0].expand(rows, -1)
    torch.mul(masks[0], masks[1], out=out)
    for m in masks[2:]:
        out.mul_(m)
    return out


def _row_mask(masks: list[torch.Tensor], r: int) -> torch.Tensor:
    """Row r of the masks' product, leaving out any mask that would leave no token, first to last."""
    def row(m: torch.Tensor) -> torch.Tensor:
        return (m[r] if m.dim() == 2 else m) > 0

    allowed = row(masks[0])
    for m in masks[1:]:
        narrower = allowed & row(m)
        if bool(narrower.any()):
            allowed = narrower
    return allowed


class Chooser:
    """The next token of each row under masks, in (rows, V) buffers reused from step to step."""

    def __init__(self):
        self._buffers = torch.empty(0)

    def _work(self, rows: int, cols: int) -> torch.Tensor:
        """Three (rows, cols) float buffers, reused from step to step: a fresh large tensor costs page
        faults each time, and this runs once per character for every candidate."""
        if self._buffers.shape[1:] != (rows, cols):
            self._buffers = torch.empty(3, rows, cols)
        return self._buffers

    def choose(self, logits: torch.Tensor, masks: list[torch.Tensor], opts: SampleOptions,
                gen: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row at the options' temperature, top-k and top-p among the tokens all `masks`
        allow (float 0/1, (V,) or (B, V)); where they leave a row no token, the last masks are dropped
        for it, never the first. Also the log-normalizer of the unmasked logits at temperature 1 (for
        the poem's log-probability). Few passes over (B, V), in reused buffers."""
        B, V = logits.shape
        work = self._work(B, V)
        T = opts.temperature
        if T > 0 and opts.top_k is None and opts.top_p is None:  # the default: no mask product needed
            log_norm = torch.exp(logits, out=work[1]).sum(-1).log_()  # no max-shift: checked just below
            low, high = torch.aminmax(log_norm)  # every logit <= log_norm: exp(logits / T) cannot overflow
            if -EXP_SAFE < float(low) and float(high) < EXP_SAFE * min(1.0, T):
                weights = work[1] if T == 1 else torch.div(logits, T, out=work[0]).exp_()
            else:  # logits too large or too small for that: shift by the row's maximum
                top = logits.amax(-1, keepdim=True)
                shifted = torch.sub(logits, top, out=work[0])
                log_norm = top.squeeze(1) + torch.exp(shifted, out=work[1]).sum(-1).log_()
                weights = work[1] if T == 1 else shifted.div_(T).exp_()
            for m in masks:
                weights.mul_(m)
            u = gen.uniform()
            return self._repair(draw(weights, u), weights, logits, masks, opts, u), log_norm
        top = logits.amax(-1, keepdim=True)
        shifted = torch.sub(logits, top, out=work[0])
        log_norm = top.squeeze(1) + torch.exp(shifted, out=work[1]).sum(-1).log_()
        allowed = _combine(masks, B, work[2])
        if T == 0:
            weights, u = allowed, None
            choice = shifted.masked_fill_(allowed == 0, float("-inf")).argmax(-1)
        else:
            # log of the masks' product: 0/1 masks exclude, the repetition weights of the verse rules weigh
            weights = filter_logits(shifted.div_(T).add_(allowed.log()), opts.top_k, opts.top_p).exp_()
            u = gen.uniform()
            choice = draw(weights, u)
        return self._repair(choice, weights, logits, masks, opts, u), log_norm

    def _repair(self, choice: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor, masks: list[torch.Tensor],
                opts: SampleOptions, u: torch.Tensor | None) -> torch.Tensor:
        """A row its masks left no token, or whose allowed tokens all underflowed, drew a token of
        weight 0: choose again for it, dropping masks as choose says (rare), with the random number
        it drew (`u`, one per row; None when greedy): a row's stream moves on as every other row's."""
        for r in torch.nonzero(~(weights.gather(1, choice[:, None]).squeeze(1) > 0)).squeeze(1).tolist():
            choice[r] = self._choose_row(logits[r], _row_mask(masks, r), opts, None if u is None else u[r:r + 1])
        return choice

    @staticmethod
    def _choose_row(logits: torch.Tensor, allowed: torch.Tensor, opts: SampleOptions, u: torch.Tensor | None) -> int:
        """choose for one row whose masks needed narrowing less, or whose allowed tokens all underflowed,
        with the random number `u` (one; None when greedy)."""
        masked = logits.masked_fill(~allowed, float("-inf"))[None]
        if opts.temperature > 0 and u is not None:
            scaled = filter_logits((masked - masked.max()).div_(opts.temperature), opts.top_k, opts.top_p)
            weights = scaled.exp_()
            if float(weights.sum()) > 0:
                return int(draw(weights, u)[0])
        return int(masked.argmax())

    def next_tokens(self, logits: torch.Tensor, masks: list[torch.Tensor], forced: torch.Tensor,
                     opts: SampleOptions, gen: Streams, only_one: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's next token: `forced` where given (-1: none), else one drawn by choose under `masks`
        (or, when `only_one` says the first mask allows a single token, that token); and its
        log-probability under the unmasked model at temperature 1."""
        logits = logits.float()
        if only_one or bool((forced >= 0).all()):  # nothing to draw
            gen.uniform()  # but each row's stream moves on as if it drew (its poem keeps its numbers)
            choice = torch.where(forced >= 0, forced, masks[0].expand(len(forced), -1).argmax(-1))
            log_norm = torch.logsumexp(logits, -1)
        else:
            drawn, log_norm = self.choose(logits, masks, opts, gen)
            choice = torch.where(forced >= 0, forced, drawn)
        return choice, logits.gather(1, choice[:, None]).squeeze(1) - log_norm
