"""Writing a poem's head after its title, for a model whose records carry them (vocab.plans): the
poet's name when one is asked for, then the plan, one keyword a line, each one or two characters as
the corpus's are (poetgen.plan), before the body. A fixed form's plan has one keyword for each of its
lines; a free-form plan ends where the model ends it (at most plan.MAX_PLAN_LINES keywords; see
keywords.plan_lines)."""

from __future__ import annotations

import torch

from ..vocab import Vocab
from .choice import Streams
from .keywords import plan_lines as keyword_lines
from .request import SampleOptions

DRAWN_KEYWORD = 2  # characters of a keyword the model writes: the corpus's are one or two


def title_end(vocab: Vocab, opts: SampleOptions) -> int:
    """The token that follows the title: <author> or <kw> where the model writes a head, else <sep>."""
    if not vocab.plans:
        return vocab.sep_id
    if opts.author:
        return vocab.author_id
    return vocab.kw_id if opts.plan else vocab.sep_id


def plan_lines(opts: SampleOptions) -> int:
    """The keywords of a full plan for these options (keywords.plan_lines)."""
    return keyword_lines(opts.form, opts.acrostic)


def write_head(decoder, opts: SampleOptions, gen: Streams, logits: torch.Tensor, state
               ) -> tuple[list[list[str]] | None, torch.Tensor, object]:
    """After title_end: the poet's name (given), then, with opts.plan, one plan per poem: the given
    keywords (opts.keywords), the rest drawn from the poem's stream; the plans (None without) and the
    logits and state after the head's <sep>."""
    vocab, num = decoder.vocab, opts.num
    if opts.author:
        logits, state = _read(decoder.stepper, [*vocab.encode(opts.author), vocab.kw_id if opts.plan else vocab.sep_id],
                              state, num)
    if not opts.plan:
        return None, logits, state
    given = list(opts.keywords)
    if given:  # the user's keywords open the plan, the same for every poem: read in once
        lines = plan_lines(opts)
        ids = [t for i, k in enumerate(given) for t in [*([vocab.kw_id] if i else []), *vocab.encode(k)]]
        if len(given) == lines:
            ids.append(vocab.sep_id)
        logits, state = _read(decoder.stepper, ids, state, num)
        if len(given) == lines:
            return [list(given) for _ in range(num)], logits, state
    return _write_plans(decoder, opts, gen, logits, state, given)


def _read(stepper, ids: list[int], state, num: int):
    """The logits and state after all `num` rows read `ids`."""
    for token in ids:
        logits, state = stepper.step(torch.full((num,), token, dtype=torch.long), state)
    return logits, state


def _write_plans(decoder, opts: SampleOptions, gen: Streams, logits: torch.Tensor, state, given: list[str]):
    """One plan per poem after the `given` keywords (read in: the last one is closed, the model writes
    what follows it, <kw> or, in free form, <sep>), rows leaving the batch as they write their <sep>
    (as titles do)."""
    vocab, num = decoder.vocab, opts.num
    lines = plan_lines(opts)
    chars = decoder.class_masks[decoder.title_start_row]  # (V,) 0/1: the characters a title may hold
    plans: list[list[list[str]]] = [[list(k) for k in given] or [[]] for _ in range(num)]
    closed = [bool(given)] * num  # the last keyword is given whole: no character may extend it
    final_logits, final_state = logits.new_empty(num, logits.size(1)), decoder.stepper.expand(state, num)
    alive = torch.arange(num)
    for _ in range((lines - len(given)) * (DRAWN_KEYWORD + 1) + bool(given)):
        poems = alive.tolist()
        masks = torch.zeros(len(poems), chars.numel())
        for i, r in enumerate(poems):
            written, last = len(plans[r][-1]), len(plans[r]) == lines
            if written < DRAWN_KEYWORD and not closed[r]:
                masks[i] = chars
            if written:  # a keyword ends with the next one's <kw>, the last with <sep>
                masks[i, vocab.sep_id if last else vocab.kw_id] = 1.0
                if opts.form is None:
                    masks[i, vocab.sep_id] = 1.0  # a free-form plan may end early
        choice, _ = decoder.chooser.choose(logits.float(), [masks], opts, gen.rows(poems))
        for i, r in enumerate(poems):
            token = int(choice[i])
            closed[r] = False
            if token == vocab.kw_id:
                plans[r].append([])
            elif token != vocab.sep_id:
                plans[r][-1].append(vocab.tokens[token])
        logits, state = decoder.stepper.step(choice, state)
        alive, logits, state = retire(decoder.stepper, choice == vocab.sep_id, alive, logits, state, final_logits,
                                      final_state)
        if alive.numel() == 0:
            break
    return [["".join(k) for k in plan] for plan in plans], final_logits, final_state


def retire(stepper, ended: torch.Tensor, alive: torch.Tensor, logits: torch.Tensor, state,
           final_logits: torch.Tensor, final_state):
    """Rows that wrote their last token leave the batch: their logits and state are kept at their poem's
    place in `final_logits` and `final_state`; the rows still writing go on (alive, logits, state)."""
    if bool(ended.any()):
        idx, rest = torch.nonzero(ended).squeeze(1), torch.nonzero(~ended).squeeze(1)
        final_logits[alive[idx]] = logits[idx]
        stepper.put(final_state, alive[idx], state, idx)
        alive, logits, state = alive[rest], logits[rest], stepper.select(state, rest)
    return alive, logits, state
