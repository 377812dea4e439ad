"""Decoding: temperature, top-k and top-p sampling under the constraints of forms and acrostics,
and the records poems are written as.

The model's distribution is masked and renormalized at every step, so every poem is well formed
by construction; nothing is patched afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import Request, SampleOptions
from .forms import RULES, Rule, split_lines
from .glyphs import drawable
from .masks import VerseRules, rule_masks
from .model import LanguageModel, Stepper
from .text import to_script
from .vocab import MAX_TITLE, Vocab

MAX_ROWS = 800  # candidate rows decoded at once (memory: a few (rows, vocabulary) tensors)

__all__ = ["GeneratedPoem", "Generator", "Request", "SampleOptions", "draw", "filter_logits", "poem_record", "prepare"]


@dataclass
class GeneratedPoem:
    title: str
    body: str
    logprob: float  # under the unconstrained model at temperature 1: the body and its end, given the title
    lines: list[str] = field(default_factory=list)
    score: float = 0.0  # what best-of-N ranks by: logprob per character (the end token counted)
    candidates: int = 1  # how many were drawn for it


def score(logprob: float, body: str) -> float:
    """The reranking score: mean log-probability per character, the end token counted. Repetition
    needs no penalty here: the masks already forbid it in the fixed forms."""
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


def draw(weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from weights (B, V), probabilities or unnormalized, by inverse CDF in two
    levels (a block of DRAW_BLOCK columns, then a column in it): one pass over (B, V) instead of a
    cumulative sum, and much faster on CPU than torch.multinomial. A row with no weight gives a token
    of weight 0 (the caller checks)."""
    B, V = weights.shape
    n = V // DRAW_BLOCK
    weights = weights.contiguous()
    block_sums = weights.as_strided((B, n, DRAW_BLOCK), (V, DRAW_BLOCK, 1)).sum(-1)
    if V > n * DRAW_BLOCK:
        block_sums = torch.cat([block_sums, weights[:, n * DRAW_BLOCK:].sum(-1, keepdim=True)], dim=1)
    block_cdf = block_sums.cumsum(-1)
    target = torch.rand(B, 1, generator=gen, dtype=block_cdf.dtype) * block_cdf[:, -1:]
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

    def __init__(self, model: LanguageModel, vocab: Vocab, script: str | None = None):
        self.model = model
        self.vocab = vocab
        self.stepper = Stepper(model)
        # in simplified script, a model trained before glyph normalization never writes a variant form
        self.masks, self.rule_index = rule_masks(vocab, drawable if script == "simplified" else None)
        self.fmasks = self.masks.float()
        self.title_start_row = len(RULES)
        self.title_row = len(RULES) + 1
        self._buffers = torch.empty(0)

    def _work(self, rows: int, cols: int) -> torch.Tensor:
        """Three (rows, cols) float buffers, reused from step to step: a fresh large tensor costs page
        faults each time, and this runs once per character for every candidate."""
        if self._buffers.shape[1:] != (rows, cols):
            self._buffers = torch.empty(3, rows, cols)
        return self._buffers

    def _choose(self, logits: torch.Tensor, masks: list[torch.Tensor], opts: SampleOptions,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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
            choice = draw(weights, gen)
            return self._repair(choice, weights, logits, masks, opts, gen), log_norm
        top = logits.amax(-1, keepdim=True)
        shifted = torch.sub(logits, top, out=work[0])
        log_norm = top.squeeze(1) + torch.exp(shifted, out=work[1]).sum(-1).log_()
        allowed = _combine(masks, B, work[2])
        if T == 0:
            weights = allowed
            choice = shifted.masked_fill_(allowed == 0, float("-inf")).argmax(-1)
        else:
            weights = filter_logits(shifted.div_(T).masked_fill_(allowed == 0, float("-inf")),
                                    opts.top_k, opts.top_p).exp_()
            choice = draw(weights, gen)
        return self._repair(choice, weights, logits, masks, opts, gen), log_norm

    def _repair(self, choice: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor, masks: list[torch.Tensor],
                opts: SampleOptions, gen: torch.Generator) -> torch.Tensor:
        """A row its masks left no token, or whose allowed tokens all underflowed, drew a token of
        weight 0: choose again for it, dropping masks as _choose says (rare)."""
        for r in torch.nonzero(~(weights.gather(1, choice[:, None]).squeeze(1) > 0)).squeeze(1).tolist():
            choice[r] = self._choose_row(logits[r], _row_mask(masks, r), opts, gen)
        return choice

    @staticmethod
    def _choose_row(logits: torch.Tensor, allowed: torch.Tensor, opts: SampleOptions, gen: torch.Generator) -> int:
        """_choose for one row whose masks needed narrowing less, or whose allowed tokens all underflowed."""
        masked = logits.masked_fill(~allowed, float("-inf"))[None]
        if opts.temperature > 0:
            scaled = filter_logits((masked - masked.max()).div_(opts.temperature), opts.top_k, opts.top_p)
            weights = scaled.exp_()
            if float(weights.sum()) > 0:
                return int(draw(weights, gen)[0])
        return int(masked.argmax())

    def _titles(self, opts: SampleOptions, gen: torch.Generator, on_title) -> tuple[list[str], torch.Tensor, object]:
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
            choice, _ = self._choose(logits.float(), [self.fmasks[rows]], opts, gen)
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
                      on_title: Callable[[int, str], None] | None = None,
                      verse: VerseRules | None = None) -> Iterator[list[GeneratedPoem]]:
        """Sample opts.num poems, yielded in batches of at most MAX_ROWS candidate rows, so memory stays
        bounded whatever --num is. Each title is written once; then opts.best_of bodies per poem are
        drawn in one batch under the form's grammar and the verse rules, and the best by `score` is kept.
        `on_title(poem, title)` sees each generated title, `on_char(row, ch)` each body character as it
        comes (rows are candidates: stream only with best_of 1). The same options and seed give the same
        poems."""
        opts.validate()
        best_of = opts.best_of if opts.temperature > 0 else 1  # greedy candidates would all be the same
        per_batch = max(1, MAX_ROWS // best_of)
        for k, start in enumerate(range(0, opts.num, per_batch)):
            part = replace(opts, num=min(per_batch, opts.num - start), seed=opts.seed + k)
            candidates = self.candidates(part, best_of, on_char, on_title, verse)
            yield [max(candidates[p * best_of:(p + 1) * best_of], key=lambda c: c.score) for p in range(part.num)]

    def candidates(self, opts: SampleOptions, best_of: int, on_char=None, on_title=None,
                   verse: VerseRules | None = None) -> list[GeneratedPoem]:
        """All opts.num * best_of candidates of one batch, poem by poem (best_of rows per poem, sharing
        its title), each with its score."""
        vocab = self.vocab
        gen = torch.Generator().manual_seed(opts.seed)
        titles, logits, state = self._titles(opts, gen, on_title)
        R = opts.num * best_of
        poem_of_row = torch.arange(opts.num).repeat_interleave(best_of)
        logits, state = logits[poem_of_row], self.stepper.select(state, poem_of_row)
        fixed = opts.form is not None
        constraints = [opts.body_constraint()] if fixed else [opts.body_constraint() for _ in range(R)]
        rules = verse.rows(opts.form, R, opts.seed) if (fixed and verse is not None) else None
        bodies: list[list[str]] = [[] for _ in range(R)]
        prompt = list(opts.prompt)
        logprob = torch.zeros(R, dtype=torch.float64)
        finished = torch.zeros(R, dtype=torch.bool)
        columns: list[torch.Tensor] = []  # the tokens chosen at each step (fixed forms, not streaming)
        eos = self.rule_index[Rule.EOS]
        for _ in range(max(opts.max_chars, len(opts.prompt)) + 64):  # a bound no poem reaches
            forced = torch.full((R,), -1, dtype=torch.long)
            if fixed:
                rule, head = constraints[0].rule()
                ch = prompt.pop(0) if prompt else head
                if ch is not None:
                    forced[:] = vocab.stoi[ch]
                single = int(self.masks[self.rule_index[rule]].sum()) == 1
                masks = [self.fmasks[self.rule_index[rule]]]
                line, col = constraints[0].line, constraints[0].col
                if rules is not None and rule == Rule.HAN:
                    masks += [m for m in rules.masks(line, col) if m is not None]
            else:
                rows = []
                for r in range(R):
                    rule, head = constraints[r].rule()
                    rows.append(eos if finished[r] else self.rule_index[rule])
                    ch = (opts.prompt[len(bodies[r])] if len(bodies[r]) < len(opts.prompt) else head) \
                        if not finished[r] else None
                    if ch is not None:
                        forced[r] = vocab.stoi[ch]
                single = False
                masks = [self.fmasks[torch.tensor(rows)]]
            logits = logits.float()
            if bool((forced >= 0).all()) or single:
                choice = torch.where(forced >= 0, forced, masks[0].expand(R, -1).argmax(-1))  # nothing to draw
                log_norm = torch.logsumexp(logits, -1)
            else:
                drawn, log_norm = self._choose(logits, masks, opts, gen)
                choice = torch.where(forced >= 0, forced, drawn)
            choice[finished] = vocab.eos_id
            model_logp = logits.gather(1, choice[:, None]).squeeze(1) - log_norm
            logprob += torch.where(finished, 0.0, model_logp.double())
            if fixed:
                if rules is not None:
                    rules.advance(line, col, choice)
                tok = int(choice[0])
                constraints[0].advance("" if tok == vocab.eos_id else vocab.tokens[tok])
            if fixed and on_char is None:  # every row at the same position: keep the column, decode at the end
                if tok == vocab.eos_id:
                    break
                columns.append(choice)
                logits, state = self.stepper.step(choice, state)
                continue
            toks, done = choice.tolist(), finished.tolist()
            for r in range(R):
                if done[r]:
                    continue
                tok = toks[r]
                if tok == vocab.eos_id:
                    finished[r] = True
                    if not fixed:
                        constraints[r].advance("")
                    continue
                ch = vocab.tokens[tok]
                bodies[r].append(ch)
                if not fixed:
                    constraints[r].advance(ch)
                if on_char:
                    on_char(r, ch)
            if bool(finished.all()):
                break
            logits, state = self.stepper.step(choice, state)
        if columns:
            bodies = [[vocab.tokens[t] for t in row] for row in torch.stack(columns, 1).tolist()]
        texts = ["".join(b) for b in bodies]
        return [GeneratedPoem(title=titles[r // best_of], body=texts[r], logprob=float(logprob[r]),
                              lines=split_lines(texts[r]), score=score(float(logprob[r]), texts[r]),
                              candidates=best_of) for r in range(R)]


# ---------------------------------------------------------------------------------------------
# A request from the user's words to a generator


def prepare(ckpt, opts: SampleOptions, request: Request) -> tuple[Generator, SampleOptions, VerseRules | None]:
    """Turn a request into (generator, options in the model's script, verse rules or None): text
    converted to the model's script, checked against its vocabulary; in a fixed form, rhyme and no
    重字 (unless request.rhyme_off), and --strict set up from the checkpoint's tone table. Raises
    UsageError naming what does not fit."""
    from .errors import UsageError
    from .text import full_width_marks

    script = ckpt.meta.script
    prompt = to_script(full_width_marks(request.prompt.strip()), script)
    title = to_script("".join(request.title.split()), script) if request.title is not None else None
    acrostic = to_script(request.acrostic.strip(), script)
    if title is not None and len(title) > MAX_TITLE:
        raise UsageError(f"--title has {len(title)} characters; titles have at most {MAX_TITLE}: shorten it")
    unknown = ckpt.vocab.unknown(prompt + (title or "") + acrostic)
    if unknown:
        raise UsageError(f"not in the model's vocabulary: {' '.join(unknown)}: use other characters")
    opts.prompt, opts.title, opts.acrostic = prompt, title, acrostic
    opts.validate()
    if request.template and not request.strict:
        raise UsageError("--template needs --strict")
    rules = None
    if opts.form is not None and (request.strict or not request.no_rhyme):
        from . import prosody
        from .masks import ProsodyMasks, verse_rules

        if ckpt.tones is None and request.strict:
            raise UsageError(f"{ckpt.path} has no tone table, which --strict needs: export it again with "
                             "`poetgen export`")
        masks = ProsodyMasks(ckpt.vocab, prosody.ToneTable.from_counts(ckpt.tones or {}),
                             prosody.load_rhymes(script or "simplified"))
        rhyme_char = to_script(request.rhyme.strip(), script) if request.rhyme else None
        rules = verse_rules(opts, masks, rhyme=not request.no_rhyme, strict=request.strict,
                            template_key=request.template, rhyme_char=rhyme_char)
    elif request.strict:
        raise UsageError("--strict needs a regulated form: --form wujue, qijue, wulv or qilv")
    elif request.rhyme and opts.form is None:
        raise UsageError("--rhyme needs a regulated form: --form wujue, qijue, wulv or qilv")
    elif request.rhyme:
        raise UsageError("--rhyme and --no-rhyme contradict each other: drop one")
    return Generator(ckpt.model, ckpt.vocab, script), opts, rules


def poem_record(poem: GeneratedPoem, index: int, opts: SampleOptions, strict: bool, checkpoint: Path) -> dict:
    """The JSON record of one poem (`--format json|jsonl`)."""
    return {"text": poem.body, "lines": poem.lines, "title": poem.title, "prompt": opts.prompt, "seed": opts.seed,
            "index": index, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "logprob": round(poem.logprob, 4), "score": round(poem.score, 4), "best_of": poem.candidates,
            "strict": strict, "chars": len(poem.body), "checkpoint": str(checkpoint)}
