"""Decoding: temperature, top-k and top-p sampling under the constraints of forms and acrostics,
and the records poems are written as.

The model's distribution is masked and renormalized at every step, so every poem is well formed
by construction; nothing is patched afterwards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Request, SampleOptions
from .forms import RULES, BodyConstraint, Rule, split_lines
from .masks import rule_masks
from .model import LanguageModel, Stepper
from .text import to_script
from .vocab import MAX_TITLE, Vocab

__all__ = ["GeneratedPoem", "Generator", "Request", "SampleOptions", "draw", "filter_logits", "poem_record", "prepare"]


@dataclass
class GeneratedPoem:
    title: str
    body: str
    logprob: float  # under the unconstrained model at temperature 1, body and end token
    lines: list[str] = field(default_factory=list)


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
    """One token per row from probs (B, V) by inverse CDF: much faster on CPU than torch.multinomial."""
    cdf = probs.double().cumsum(-1)
    target = torch.rand(probs.size(0), 1, generator=gen, dtype=torch.float64) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.size(-1) - 1)
    zero = probs.gather(1, choice[:, None]).squeeze(1) <= 0  # only by rounding at the very top of the CDF
    if bool(zero.any()):
        choice[zero] = probs[zero].argmax(-1)
    return choice


class Generator:
    """Samples poems from a model under SampleOptions."""

    def __init__(self, model: LanguageModel, vocab: Vocab):
        self.model = model
        self.vocab = vocab
        self.stepper = Stepper(model)
        self.masks, self.rule_index = rule_masks(vocab)
        self.title_start_row = len(RULES)
        self.title_row = len(RULES) + 1

    def generate(self, opts: SampleOptions, on_char: Callable[[int, str], None] | None = None,
                 constraint_for_row: Callable[[int], BodyConstraint] | None = None,
                 on_title: Callable[[int, str], None] | None = None) -> list[GeneratedPoem]:
        """Sample opts.num poems as one batch. `on_title(row, title)` sees each generated title once it
        is complete, `on_char(row, ch)` each body character as it comes; `constraint_for_row` replaces
        the plain form constraint (--strict)."""
        opts.validate()
        vocab = self.vocab
        gen = torch.Generator().manual_seed(opts.seed)
        B = opts.num
        prefix = [vocab.bos_id]
        have_title = opts.title is not None
        if have_title:
            prefix += [*vocab.encode(opts.title), vocab.sep_id]
        logits, state = self.stepper.prefill(torch.tensor([prefix]))
        logits = logits.expand(B, -1)
        state = self.stepper.expand(state, B)

        constraints = [constraint_for_row(r) if constraint_for_row else opts.body_constraint() for r in range(B)]
        in_title = [not have_title] * B
        titles = [[] for _ in range(B)]
        bodies = [[] for _ in range(B)]
        forced_prompt = [list(opts.prompt) for _ in range(B)]
        logprob = torch.zeros(B, dtype=torch.float64)
        finished = torch.zeros(B, dtype=torch.bool)
        step_limit = MAX_TITLE + max(opts.max_chars, len(opts.prompt)) + 64  # a bound no poem reaches
        for _ in range(step_limit):
            mask_rows = []
            forced = torch.full((B,), -1, dtype=torch.long)
            in_body = torch.tensor([not (finished[r] or in_title[r]) for r in range(B)])
            for r in range(B):
                if finished[r]:
                    mask_rows.append(self.rule_index[Rule.EOS])
                    forced[r] = vocab.eos_id
                elif in_title[r]:
                    n = len(titles[r])
                    if n >= MAX_TITLE:
                        forced[r] = vocab.sep_id
                    mask_rows.append(self.title_start_row if n == 0 else self.title_row)
                else:
                    rule, head = constraints[r].rule()
                    mask_rows.append(self.rule_index[rule])
                    ch = forced_prompt[r].pop(0) if forced_prompt[r] else head
                    if ch is not None:
                        forced[r] = vocab.stoi[ch]
            allowed = self.masks[torch.tensor(mask_rows)]
            if constraint_for_row is not None:
                for r in range(B):
                    extra = None if finished[r] or in_title[r] else constraints[r].extra_mask()
                    if extra is not None and bool((allowed[r] & extra).any()):
                        allowed[r] &= extra
            model_logp = F.log_softmax(logits.float(), dim=-1)
            masked = logits.float().masked_fill(~allowed, float("-inf"))
            if opts.temperature == 0:
                choice = masked.argmax(-1)
            else:
                # shift the best allowed logit to 0 before dividing: no overflow at any temperature
                scaled = (masked - masked.max(-1, keepdim=True).values) / opts.temperature
                scaled = filter_logits(scaled, opts.top_k, opts.top_p)
                choice = draw(scaled.softmax(-1), gen)
            outside = ~allowed.gather(1, choice[:, None]).squeeze(1)  # only if the arithmetic failed
            if bool(outside.any()):
                choice[outside] = masked[outside].argmax(-1)
            choice = torch.where(forced >= 0, forced, choice)
            logprob += torch.where(in_body, model_logp.gather(1, choice[:, None]).squeeze(1).double(), 0.0)
            for r in range(B):
                if finished[r]:
                    continue
                tok = int(choice[r])
                if in_title[r]:
                    if tok == vocab.sep_id:
                        in_title[r] = False
                        if on_title:
                            on_title(r, "".join(titles[r]))
                    else:
                        titles[r].append(vocab.tokens[tok])
                elif tok == vocab.eos_id:
                    constraints[r].advance("")
                    finished[r] = True
                else:
                    ch = vocab.tokens[tok]
                    constraints[r].advance(ch)
                    bodies[r].append(ch)
                    if on_char:
                        on_char(r, ch)
            if bool(finished.all()):
                break
            logits, state = self.stepper.step(choice, state)
        poems = []
        for r in range(B):
            body = "".join(bodies[r])
            title = opts.title if have_title else "".join(titles[r])
            poems.append(GeneratedPoem(title=title, body=body, logprob=float(logprob[r]), lines=split_lines(body)))
        return poems


# ---------------------------------------------------------------------------------------------
# A request from the user's words to a generator


def prepare(ckpt, opts: SampleOptions, request: Request) -> tuple[Generator, SampleOptions, Callable | None]:
    """Turn a request into (generator, options in the model's script, constraint maker or None):
    text converted to the model's script, checked against its vocabulary, --strict set up from the
    checkpoint's tone table. Raises UsageError naming what does not fit."""
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
    constraint_for_row = None
    if request.strict:
        from . import prosody
        from .masks import ProsodyMasks, strict_factory

        if ckpt.tones is None:
            raise UsageError(f"{ckpt.path} has no tone table, which --strict needs: export it again with "
                             "`poetgen export`")
        tones = prosody.ToneTable.from_counts(ckpt.tones)
        rhyme = to_script(request.rhyme.strip(), script) if request.rhyme else None
        masks = ProsodyMasks(ckpt.vocab, tones, prosody.load_rhymes(script or "simplified"))
        constraint_for_row = strict_factory(opts, masks, request.template, rhyme, opts.seed)
    elif request.template or request.rhyme:
        raise UsageError("--template and --rhyme need --strict")
    return Generator(ckpt.model, ckpt.vocab), opts, constraint_for_row


def poem_record(poem: GeneratedPoem, index: int, opts: SampleOptions, strict: bool, checkpoint: Path) -> dict:
    """The JSON record of one poem (`--format json|jsonl`)."""
    return {"text": poem.body, "lines": poem.lines, "title": poem.title, "prompt": opts.prompt, "seed": opts.seed,
            "index": index, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "logprob": round(poem.logprob, 4), "strict": strict, "chars": len(poem.body),
            "checkpoint": str(checkpoint)}
