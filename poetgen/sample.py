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


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from probs (B, V), or unnormalized weights, by inverse CDF: much faster on CPU
    than torch.multinomial."""
    cdf = probs.cumsum(-1)
    target = torch.rand(probs.size(0), 1, generator=gen) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.size(-1) - 1)
    zero = probs.gather(1, choice[:, None]).squeeze(1) <= 0  # only by rounding at the very top of the CDF
    if bool(zero.any()):
        choice[zero] = probs[zero].argmax(-1)
    return choice


class Generator:
    """Samples poems from a model under SampleOptions: titles first (one per poem), then the bodies,
    `best_of` candidates per poem in one batch, the best kept by `score`."""

    def __init__(self, model: LanguageModel, vocab: Vocab):
        self.model = model
        self.vocab = vocab
        self.stepper = Stepper(model)
        self.masks, self.rule_index = rule_masks(vocab)
        self.title_start_row = len(RULES)
        self.title_row = len(RULES) + 1

    def _choose(self, logits: torch.Tensor, allowed: torch.Tensor, opts: SampleOptions,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row among the allowed ones (B, V) at the options' temperature, top-k and top-p;
        and the log-normalizer of the unmasked logits at temperature 1 (for the poem's log-probability).
        Few full passes over (B, V): this runs once per character for every candidate."""
        top = logits.max(-1, keepdim=True).values
        shifted = logits - top  # (B, V), the best at 0
        log_norm = top.squeeze(1) + shifted.exp().sum(-1).log()
        if opts.temperature == 0:
            return logits.masked_fill(~allowed, float("-inf")).argmax(-1), log_norm
        if opts.top_k is not None or opts.top_p is not None:
            scaled = filter_logits((logits - top).div_(opts.temperature).masked_fill_(~allowed, float("-inf")),
                                   opts.top_k, opts.top_p)
            weights = scaled.exp_()
        else:
            weights = shifted.div_(opts.temperature).exp_().masked_fill_(~allowed, 0.0)
        empty = weights.sum(-1) <= 0  # allowed tokens so unlikely that their weights underflow
        if bool(empty.any()):
            masked = logits[empty].masked_fill(~allowed[empty], float("-inf"))
            weights[empty] = (masked - masked.max(-1, keepdim=True).values).div_(opts.temperature).exp_()
        choice = draw(weights, gen)
        outside = ~allowed.gather(1, choice[:, None]).squeeze(1)  # only if the arithmetic failed
        if bool(outside.any()):
            choice[outside] = logits[outside].masked_fill(~allowed[outside], float("-inf")).argmax(-1)
        return choice, log_norm

    def _titles(self, opts: SampleOptions, gen: torch.Generator, on_title) -> tuple[list[str], torch.Tensor, object]:
        """One title per poem (given, or written by the model), with the logits and state after its <sep>."""
        vocab, num = self.vocab, opts.num
        if opts.title is not None:
            ids = [vocab.bos_id, *vocab.encode(opts.title), vocab.sep_id]
            logits, state = self.stepper.prefill(torch.tensor([ids]))
            return [opts.title] * num, logits.expand(num, -1), self.stepper.expand(state, num)
        logits, state = self.stepper.prefill(torch.tensor([[vocab.bos_id]]))
        logits, state = logits.expand(num, -1), self.stepper.expand(state, num)
        titles: list[list[str]] = [[] for _ in range(num)]
        done = torch.zeros(num, dtype=torch.bool)
        for _ in range(MAX_TITLE + 1):
            rows = torch.tensor([self.title_start_row if not titles[r] else self.title_row for r in range(num)])
            choice, _ = self._choose(logits.float(), self.masks[rows], opts, gen)
            choice[torch.tensor([len(t) >= MAX_TITLE for t in titles])] = vocab.sep_id
            choice[done] = vocab.sep_id
            for r in range(num):
                if done[r]:
                    continue
                if int(choice[r]) == vocab.sep_id:
                    if on_title:
                        on_title(r, "".join(titles[r]))
                else:
                    titles[r].append(vocab.tokens[int(choice[r])])
            new_logits, new_state = self.stepper.step(choice, state)
            logits = torch.where(done[:, None], logits, new_logits)  # finished titles wait, state kept
            state = self.stepper.keep(done, state, new_state)
            done = done | (choice == vocab.sep_id)
            if bool(done.all()):
                break
        return ["".join(t) for t in titles], logits, state

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
        eos = self.rule_index[Rule.EOS]
        for _ in range(max(opts.max_chars, len(opts.prompt)) + 64):  # a bound no poem reaches
            forced = torch.full((R,), -1, dtype=torch.long)
            if fixed:
                rule, head = constraints[0].rule()
                ch = prompt.pop(0) if prompt else head
                if ch is not None:
                    forced[:] = vocab.stoi[ch]
                allowed = self.masks[self.rule_index[rule]].expand(R, -1)
                line, col = constraints[0].line, constraints[0].col
                if rules is not None and rule == Rule.HAN:
                    hard, soft = rules.masks(line, col)
                    allowed = _narrow(allowed, hard, soft)
            else:
                rows = []
                for r in range(R):
                    rule, head = constraints[r].rule()
                    rows.append(eos if finished[r] else self.rule_index[rule])
                    ch = (opts.prompt[len(bodies[r])] if len(bodies[r]) < len(opts.prompt) else head) \
                        if not finished[r] else None
                    if ch is not None:
                        forced[r] = vocab.stoi[ch]
                allowed = self.masks[torch.tensor(rows)]
            logits = logits.float()
            if bool((forced >= 0).all()) or (fixed and int(allowed[0].sum()) == 1):
                choice = torch.where(forced >= 0, forced, allowed.float().argmax(-1))  # nothing to draw
                log_norm = torch.logsumexp(logits, -1)
            else:
                drawn, log_norm = self._choose(logits, allowed, opts, gen)
                choice = torch.where(forced >= 0, forced, drawn)
            choice[finished] = vocab.eos_id
            model_logp = logits.gather(1, choice[:, None]).squeeze(1) - log_norm
            logprob += torch.where(finished, 0.0, model_logp.double())
            if fixed:
                if rules is not None:
                    rules.advance(line, col, choice)
                tok = int(choice[0])
                constraints[0].advance("" if tok == vocab.eos_id else vocab.tokens[tok])
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
        texts = ["".join(b) for b in bodies]
        return [GeneratedPoem(title=titles[r // best_of], body=texts[r], logprob=float(logprob[r]),
                              lines=split_lines(texts[r]), score=score(float(logprob[r]), texts[r]),
                              candidates=best_of) for r in range(R)]


def _narrow(allowed: torch.Tensor, hard: torch.Tensor | None, soft: torch.Tensor | None) -> torch.Tensor:
    """`allowed` & hard & soft per row; a row left empty drops soft, then hard (never an empty row)."""
    out = allowed
    if hard is not None:
        with_hard = allowed & hard
        ok = with_hard.any(-1, keepdim=True)
        out = torch.where(ok, with_hard, allowed)
    if soft is not None:
        with_soft = out & soft
        ok = with_soft.any(-1, keepdim=True)
        out = torch.where(ok, with_soft, out)
    return out


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
    return Generator(ckpt.model, ckpt.vocab), opts, rules


def poem_record(poem: GeneratedPoem, index: int, opts: SampleOptions, strict: bool, checkpoint: Path) -> dict:
    """The JSON record of one poem (`--format json|jsonl`)."""
    return {"text": poem.body, "lines": poem.lines, "title": poem.title, "prompt": opts.prompt, "seed": opts.seed,
            "index": index, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "logprob": round(poem.logprob, 4), "score": round(poem.score, 4), "best_of": poem.candidates,
            "strict": strict, "chars": len(poem.body), "checkpoint": str(checkpoint)}
