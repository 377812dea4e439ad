"""Decoding: temperature, top-k and top-p sampling under the constraints of forms and acrostics,
and the records poems are written as.

The model's distribution is masked and renormalized at every step, so every poem is well formed
by construction; nothing is patched afterwards."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from .config import SampleOptions, SampleRequest, VerseOptions
from .forms import TOKEN_CLASSES, TokenClass, split_lines
from .glyphs import drawable
from .masks import VerseRules, token_class_masks
from .model import LanguageModel
from .rerank import Reranker
from .steppers import Int8Stepper, Stepper, int8_available
from .text import to_script
from .vocab import MAX_TITLE, Vocab

MAX_ROWS = 800  # candidate rows decoded at once (memory: a few (rows, vocabulary) tensors)
# Best-of-N of PRUNE_MIN or more candidates in a fixed form prunes as it goes: when a quarter, half and
# three quarters of the lines are written, only the best 3/4, 1/2 and 3/8 of each poem's candidates
# (by the score of their lines so far) go on; at best of 8 that is 6, 4 and 3, 5.2 rows per poem on
# average instead of 8. SampleOptions.prune (`--no-prune`) writes every candidate to the end.
PRUNE_MIN = 4
PRUNE = ((1 / 4, 3 / 4), (1 / 2, 1 / 2), (3 / 4, 3 / 8))  # (share of the lines written, share of candidates kept)

__all__ = ["GeneratedPoem", "Generator", "SampleOptions", "SampleRequest", "draw", "filter_logits",
           "in_model_script", "poem_record", "prepare"]


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

    def __str__(self) -> str:
        """The poem as `poetgen sample` writes it: the title in 《》, then one line per verse line."""
        return (f"《{self.title}》\n" if self.title else "") + "\n".join(self.lines)


def _batch_progress(on_progress: Callable[[float], None], first: int, poems: int, share: float) -> None:
    """on_progress of iter_generate, from the share of a batch of `poems` poems (from poem `first`) written."""
    on_progress(first + share * poems)


def pruned(opts: SampleOptions, candidates: int) -> bool:
    """Whether best-of-`candidates` under these options prunes as it goes (PRUNE)."""
    return opts.prune and opts.form is not None and candidates >= PRUNE_MIN


def score(logprob: float, body: str) -> float:
    """The reranking score: mean log-probability per character, the end token counted. Repetition is
    weighed while drawing, by the rules of verse (masks.SECOND_USE_WEIGHT), not here."""
    return logprob / (len(body) + 1)


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


class Generator:
    """Samples poems from a model under SampleOptions: titles first (one per poem), then the bodies,
    `best_of` candidates per poem in one batch, the best kept by `score`."""

    def __init__(self, model: LanguageModel, vocab: Vocab, script: str | None = None, int8: bool = False,
                 reranker: Reranker | None = None):
        self.model = model
        self.vocab = vocab
        self.reranker = reranker  # best-of-N in a fixed form ranks by it when given (rerank.py)
        cpu = next(model.parameters()).device.type == "cpu"
        use_int8 = int8 and cpu and model.config.cell == "lstm" and int8_available()
        self.stepper = Int8Stepper(model) if use_int8 else Stepper(model)
        # in simplified script, a model trained before glyph normalization never writes a variant form
        is_in_class, self.class_index = token_class_masks(vocab, drawable if script == "simplified" else None)
        self.class_masks = is_in_class.float()  # (classes + 2, V) 0/1: a row per token class, then the title rows
        self.single_token = (is_in_class.sum(1) == 1).tolist()  # per row: the class has one token (nothing to draw)
        self.title_start_row = len(TOKEN_CLASSES)
        self.title_row = len(TOKEN_CLASSES) + 1
        self._buffers = torch.empty(0)

    def _work(self, rows: int, cols: int) -> torch.Tensor:
        """Three (rows, cols) float buffers, reused from step to step: a fresh large tensor costs page
        faults each time, and this runs once per character for every candidate."""
        if self._buffers.shape[1:] != (rows, cols):
            self._buffers = torch.empty(3, rows, cols)
        return self._buffers

    def _choose(self, logits: torch.Tensor, masks: list[torch.Tensor], opts: SampleOptions,
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
        weight 0: choose again for it, dropping masks as _choose says (rare), with the random number
        it drew (`u`, one per row; None when greedy): a row's stream moves on as every other row's."""
        for r in torch.nonzero(~(weights.gather(1, choice[:, None]).squeeze(1) > 0)).squeeze(1).tolist():
            choice[r] = self._choose_row(logits[r], _row_mask(masks, r), opts, None if u is None else u[r:r + 1])
        return choice

    @staticmethod
    def _choose_row(logits: torch.Tensor, allowed: torch.Tensor, opts: SampleOptions, u: torch.Tensor | None) -> int:
        """_choose for one row whose masks needed narrowing less, or whose allowed tokens all underflowed,
        with the random number `u` (one; None when greedy)."""
        masked = logits.masked_fill(~allowed, float("-inf"))[None]
        if opts.temperature > 0 and u is not None:
            scaled = filter_logits((masked - masked.max()).div_(opts.temperature), opts.top_k, opts.top_p)
            weights = scaled.exp_()
            if float(weights.sum()) > 0:
                return int(draw(weights, u)[0])
        return int(masked.argmax())

    def _titles(self, opts: SampleOptions, gen: Streams, on_title) -> tuple[list[str], torch.Tensor, object]:
        """One title per poem (given, or written by the model), with the logits and state after its <sep>."""
        vocab, num = self.vocab, opts.num
        if opts.title is not None:
            ids = [vocab.bos_id, *vocab.encode(opts.title), vocab.sep_id]
            logits, state = self.stepper.prefill(torch.tensor([ids]))
            return [opts.title] * num, logits.expand(num, -1), self.stepper.expand(state, num)
        logits, state = self.stepper.prefill(torch.tensor([[vocab.bos_id]]))
        logits, state = logits.expand(num, -1), self.stepper.expand(state, num)
        final_logits, final_state = logits.new_empty(num, logits.size(1)), self.stepper.expand(state, num)
        titles: list[list[str]] = [[] for _ in range(num)]
        alive = torch.arange(num)  # the poems still writing their title: finished rows leave the batch
        for _ in range(MAX_TITLE + 1):
            poems = alive.tolist()
            rows = torch.tensor([self.title_start_row if not titles[r] else self.title_row for r in poems])
            choice, _ = self._choose(logits.float(), [self.class_masks[rows]], opts, gen.rows(poems))
            choice[torch.tensor([len(titles[r]) >= MAX_TITLE for r in poems])] = vocab.sep_id
            for i, r in enumerate(poems):
                if int(choice[i]) == vocab.sep_id:
                    if on_title:
                        on_title(r, "".join(titles[r]))
                else:
                    titles[r].append(vocab.tokens[int(choice[i])])
            logits, state = self.stepper.step(choice, state)
            ended = choice == vocab.sep_id
            if bool(ended.any()):
                idx, rest = torch.nonzero(ended).squeeze(1), torch.nonzero(~ended).squeeze(1)
                final_logits[alive[idx]] = logits[idx]
                self.stepper.put(final_state, alive[idx], state, idx)
                alive, logits, state = alive[rest], logits[rest], self.stepper.select(state, rest)
            if alive.numel() == 0:
                break
        return ["".join(t) for t in titles], final_logits, final_state

    def generate(self, opts: SampleOptions, on_char: Callable[[int, str], None] | None = None,
                 on_title: Callable[[int, str], None] | None = None,
                 verse: VerseRules | None = None) -> list[GeneratedPoem]:
        """Sample opts.num poems (see iter_generate)."""
        return [p for batch in self.iter_generate(opts, on_char, on_title, verse) for p in batch]

    def iter_generate(self, opts: SampleOptions, on_char: Callable[[int, str], None] | None = None,
                      on_title: Callable[[int, str], None] | None = None, verse: VerseRules | None = None,
                      on_progress: Callable[[float], None] | None = None) -> Iterator[list[GeneratedPoem]]:
        """Sample opts.num poems, yielded in batches of at most MAX_ROWS candidate rows, so memory stays
        bounded whatever --num is. Each title is written once; then opts.candidates_per_poem bodies per
        poem are drawn in one batch under the form's grammar and the rules of verse, pruned as they go
        (PRUNE, unless opts.prune is off), and the best by `score` is kept. `on_title(poem, title)` sees
        each generated title, `on_char(row, ch)` each body character as it comes (rows are candidates:
        stream only with one per poem). `on_progress(poems)` hears after each character how many poems'
        worth are written (a float, up to opts.num; in free form measured against opts.max_chars, so it
        may jump at a batch's end). The same options and seed give the same poems. The
        options are trusted: config.sample_request checks them."""
        best_of = opts.candidates_per_poem
        per_batch = max(1, MAX_ROWS // best_of)
        prune = PRUNE if pruned(opts, best_of) else ()
        for start in range(0, opts.num, per_batch):
            part = replace(opts, num=min(per_batch, opts.num - start))
            on_step = None if on_progress is None else partial(_batch_progress, on_progress, start, part.num)
            candidates = self.candidates(part, best_of, on_char, on_title, verse, first=start, prune=prune,
                                         on_step=on_step)
            if self.reranker is not None and best_of > 1 and opts.form is not None:
                scores = self.reranker.scores([c.body for c in candidates], [c.score for c in candidates],
                                              opts.form.key)
                for c, s in zip(candidates, scores, strict=True):
                    c.score = s
            each = len(candidates) // part.num
            chosen = [max(candidates[p * each:(p + 1) * each], key=lambda c: c.score) for p in range(part.num)]
            for p, poem in enumerate(chosen):
                poem.seed, poem.index = opts.seed, start + p
            yield chosen

    def candidates(self, opts: SampleOptions, best_of: int, on_char=None, on_title=None,
                   verse: VerseRules | None = None, first: int = 0, prune: tuple[tuple[float, float], ...] = (),
                   on_step: Callable[[float], None] | None = None) -> list[GeneratedPoem]:
        """The candidates of one batch, poem by poem (best_of rows per poem, sharing its title), each
        with its score; the poems are those of index first … first + num - 1 of the request (see
        Streams). `verse` applies to the fixed forms only. `prune` (a schedule like PRUNE): in a
        fixed form, the poems come with as many candidates as the last cut keeps (_decode_fixed_form);
        empty: all best_of, each written to the end. `on_step(share)` hears after each character the
        share of the bodies written (free form: of --max-chars, so it may end early)."""
        streams = Streams.for_poems(opts.seed, first, opts.num)
        titles, logits, state = self._titles(opts, streams, on_title)
        gen = streams.per_row(best_of)
        rows = opts.num * best_of
        poem_of_row = torch.arange(opts.num).repeat_interleave(best_of)
        logits, state = logits[poem_of_row], self.stepper.select(state, poem_of_row)
        if opts.form is None:
            bodies, logprob = self._decode_free_form(opts, rows, logits, state, gen, on_char, on_step)
            poem_of = poem_of_row.tolist()
        else:
            bodies, logprob, poem_of = self._decode_fixed_form(opts, rows, logits, state, gen, verse, on_char,
                                                               first * best_of, best_of, prune, on_step)
        return [GeneratedPoem(title=titles[p], body=body, logprob=float(lp), lines=split_lines(body),
                              score=score(float(lp), body), candidates=best_of)
                for p, body, lp in zip(poem_of, bodies, logprob, strict=True)]

    def _decode_fixed_form(self, opts: SampleOptions, rows: int, logits: torch.Tensor, state, gen: Streams,
                           verse: VerseRules | None, on_char, first_row: int = 0, best_of: int = 1,
                           prune: tuple[tuple[float, float], ...] = (), on_step: Callable[[float], None] | None = None
                           ) -> tuple[list[str], torch.Tensor, list[int]]:
        """The bodies of `rows` candidates of the fixed form opts.form (best_of consecutive rows per
        poem), from the logits and state after their titles, their log-probabilities (float64) and the
        poem of each. Every row stands at the same line and column, so one grammar serves them all, and
        all reach the end at the same step. `prune`: (share of the lines, share of candidates) pairs;
        when that share of the lines is written, only each poem's best rows by the score of what they
        have written (_best_so_far) go on, that share of best_of rounded up: the rest of the poem costs
        fewer rows. A cut the prompt reaches is skipped (its rows are all alike there). A kept row is
        written as it would have been without the others (its random numbers and rules are its own;
        on the int8 path its arithmetic too), so pruning only drops candidates, never changes one."""
        vocab, form = self.vocab, opts.form
        grammar = opts.body_grammar()
        verse_state = verse.start(form, rows, opts.seed, first_row) if verse is not None else None
        prompt = list(opts.prompt)
        logprob = torch.zeros(rows, dtype=torch.float64)
        columns: list[torch.Tensor] = []  # (rows,): the token each row took at each step
        survivors = torch.arange(rows)  # each row's index among the rows first drawn
        cuts = {int(form.lines * at): math.ceil(best_of * share) for at, share in prune  # line: rows kept per poem
                if int(form.lines * at) * (form.chars + 1) > len(opts.prompt)}  # past the prompt: rows differ
        each, steps = best_of, form.lines * (form.chars + 1) + 1  # the characters, their marks and the end
        for step in range(steps):
            token_class, head = grammar.expect()
            line, col = grammar.line, grammar.col
            if col == 0 and cuts.get(line, each) < each:
                kept = self._best_so_far(columns, logprob, each, cuts[line], opts)
                survivors, logprob, columns = survivors[kept], logprob[kept], [c[kept] for c in columns]
                logits, state, gen = logits[kept], self.stepper.select(state, kept), gen.keep(kept)
                if verse_state is not None:
                    verse_state.keep(kept)
                rows, each = len(kept), cuts[line]
            given = prompt.pop(0) if prompt else head
            forced = torch.full((rows,), vocab.stoi[given] if given is not None else -1, dtype=torch.long)
            class_row = self.class_index[token_class]
            masks = [self.class_masks[class_row]]
            if verse_state is not None and token_class == TokenClass.HAN:
                masks += [m for m in verse_state.masks(line, col) if m is not None]
            choice, choice_logprob = self._next_tokens(logits, masks, forced, opts, gen,
                                                       only_one=self.single_token[class_row])
            logprob += choice_logprob.double()
            if verse_state is not None:
                verse_state.advance(line, col, choice)
            token = int(choice[0])
            if token == vocab.eos_id:
                break
            grammar.advance(vocab.tokens[token])
            columns.append(choice)
            if on_char is not None:
                for r, t in enumerate(choice.tolist()):
                    on_char(int(survivors[r]), vocab.tokens[t])
            logits, state = self.stepper.step(choice, state)
            if on_step is not None:
                on_step((step + 1) / (steps - 1))  # the last step draws the end and leaves the loop
        bodies = ["".join(vocab.tokens[t] for t in row) for row in torch.stack(columns, 1).tolist()]
        return bodies, logprob, (survivors // best_of).tolist()

    def _best_so_far(self, columns: list[torch.Tensor], logprob: torch.Tensor, each: int, keep: int,
                     opts: SampleOptions) -> torch.Tensor:
        """The rows to keep of `each` consecutive rows per poem: each poem's `keep` best by the score of
        the lines written so far (the reranker's, or log-probability per character), in row order."""
        written = ["".join(self.vocab.tokens[t] for t in row) for row in torch.stack(columns, 1).tolist()]
        scores = [score(float(lp), body) for lp, body in zip(logprob, written, strict=True)]
        if self.reranker is not None:
            scores = self.reranker.scores(written, scores, opts.form.key)
        by_poem = torch.tensor(scores, dtype=torch.float64).view(-1, each)  # as exact as the final pick's
        order = torch.sort(by_poem, dim=1, descending=True, stable=True).indices  # ties: the earlier row first
        best = order[:, :keep].sort(dim=1).values
        return (best + torch.arange(by_poem.size(0))[:, None] * each).flatten()

    def _decode_free_form(self, opts: SampleOptions, rows: int, logits: torch.Tensor, state, gen: Streams,
                          on_char, on_step: Callable[[float], None] | None = None) -> tuple[list[str], torch.Tensor]:
        """The bodies of `rows` free-form candidates, from the logits and state after their titles, and
        their log-probabilities (float64). Each row follows its own grammar and ends when it draws the
        end of the poem; a finished row takes <eos> until all have finished."""
        vocab, eos = self.vocab, self.vocab.eos_id
        grammars = [opts.body_grammar() for _ in range(rows)]
        bodies: list[list[str]] = [[] for _ in range(rows)]
        logprob = torch.zeros(rows, dtype=torch.float64)
        finished = torch.zeros(rows, dtype=torch.bool)
        longest = max(opts.max_chars, len(opts.prompt))
        for step in range(longest + 64):  # a bound no poem reaches
            done = finished.tolist()
            class_rows = []  # each row's class of token: a row of class_masks
            forced = torch.full((rows,), -1, dtype=torch.long)
            for r, grammar in enumerate(grammars):
                token_class, head = grammar.expect()
                class_rows.append(self.class_index[TokenClass.EOS if done[r] else token_class])
                written = len(bodies[r])
                given = None if done[r] else opts.prompt[written] if written < len(opts.prompt) else head
                if given is not None:
                    forced[r] = vocab.stoi[given]
            choice, choice_logprob = self._next_tokens(logits, [self.class_masks[torch.tensor(class_rows)]], forced,
                                                       opts, gen)
            choice[finished] = eos
            logprob += torch.where(finished, 0.0, choice_logprob.double())
            for r, token in enumerate(choice.tolist()):
                if done[r]:
                    continue
                if token == eos:
                    finished[r] = True
                    grammars[r].advance("")
                    continue
                ch = vocab.tokens[token]
                bodies[r].append(ch)
                grammars[r].advance(ch)
                if on_char:
                    on_char(r, ch)
            if bool(finished.all()):
                break
            logits, state = self.stepper.step(choice, state)
            if on_step is not None:
                on_step(min(1.0, (step + 1) / (longest + 1)))
        return ["".join(b) for b in bodies], logprob

    def _next_tokens(self, logits: torch.Tensor, masks: list[torch.Tensor], forced: torch.Tensor,
                     opts: SampleOptions, gen: Streams, only_one: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's next token: `forced` where given (-1: none), else one drawn by _choose under `masks`
        (or, when `only_one` says the first mask allows a single token, that token); and its
        log-probability under the unmasked model at temperature 1."""
        logits = logits.float()
        if only_one or bool((forced >= 0).all()):  # nothing to draw
            gen.uniform()  # but each row's stream moves on as if it drew (its poem keeps its numbers)
            choice = torch.where(forced >= 0, forced, masks[0].expand(len(forced), -1).argmax(-1))
            log_norm = torch.logsumexp(logits, -1)
        else:
            drawn, log_norm = self._choose(logits, masks, opts, gen)
            choice = torch.where(forced >= 0, forced, drawn)
        return choice, logits.gather(1, choice[:, None]).squeeze(1) - log_norm


# ---------------------------------------------------------------------------------------------
# A checked request made ready for one model


def prepare(ckpt, request: SampleRequest, int8: bool = False) -> tuple[Generator, SampleOptions, VerseRules | None]:
    """A request checked by config.sample_request made ready for the checkpoint's model: (generator,
    new options with the text in the model's script, the rules of verse or None). Raises UsageError
    for what this model cannot do: characters outside its vocabulary, --strict without a tone table,
    a --rhyme group it has no character of, given characters no template allows. `int8`: sample
    through steppers.Int8Stepper where the model allows it (an LSTM on the CPU). Best-of-N in a fixed form
    ranks with the checkpoint's critic unless the options say score="logprob"."""
    opts = in_model_script(request.options, ckpt.vocab, ckpt.meta.script)
    verse = _verse_rules(ckpt, opts, request.verse)
    reranker = ckpt.reranker() if opts.score == "critic" and opts.form is not None else None
    return Generator(ckpt.model, ckpt.vocab, ckpt.meta.script, int8=int8, reranker=reranker), opts, verse


def in_model_script(opts: SampleOptions, vocab: Vocab, script: str | None) -> SampleOptions:
    """New options with the text in the model's script; UsageError for characters not in its vocabulary."""
    from .config import check_text
    from .errors import UsageError

    converted = replace(opts, prompt=to_script(opts.prompt, script), acrostic=to_script(opts.acrostic, script),
                        title=to_script(opts.title, script) if opts.title is not None else None)
    unknown = vocab.unknown(converted.prompt + (converted.title or "") + converted.acrostic)
    if unknown:
        raise UsageError(f"not in the model's vocabulary: {' '.join(unknown)}: use other characters")
    if converted != opts:  # a conversion can change a length, or part a prompt's character from its head
        check_text(converted)
    return converted


def _verse_rules(ckpt, opts: SampleOptions, verse: VerseOptions) -> VerseRules | None:
    """The rules of verse the request asks for, from the checkpoint's tone table and the rhyme table of
    its script: None in free form or under --no-rhyme."""
    if opts.form is None or (verse.no_rhyme and not verse.strict):
        return None
    from . import prosody
    from .errors import UsageError
    from .masks import ProsodyMasks, verse_rules

    if ckpt.tones is None and verse.strict:
        raise UsageError(f"{ckpt.path} has no tone table, which --strict needs: export it again with "
                         "`poetgen export`")
    script = ckpt.meta.script
    masks = ProsodyMasks(ckpt.vocab, prosody.ToneTable.from_counts(ckpt.tones or {}),
                         prosody.load_rhymes(script or "simplified"), ckpt.doubles)
    rhyme_char = to_script(verse.rhyme.strip(), script) if verse.rhyme else None
    return verse_rules(opts, masks, rhyme=not verse.no_rhyme, strict=verse.strict, template_key=verse.template,
                       rhyme_char=rhyme_char)


def poem_record(poem: GeneratedPoem, index: int, opts: SampleOptions, strict: bool, checkpoint: Path) -> dict:
    """The JSON record of one poem (`--format json|jsonl`)."""
    return {"text": poem.body, "lines": poem.lines, "title": poem.title, "prompt": opts.prompt, "seed": opts.seed,
            "index": index, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "logprob": round(poem.logprob, 4), "score": round(poem.score, 4), "best_of": poem.candidates,
            "prune": pruned(opts, poem.candidates), "strict": strict, "chars": len(poem.body),
            "checkpoint": str(checkpoint)}
