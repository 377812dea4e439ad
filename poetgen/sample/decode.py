"""Decoding the candidates of a batch: titles first (one per poem), then best_of bodies per poem under
the form's grammar and the rules of verse, a fixed form's rows in lockstep (searched line by line, or
pruned at the cuts), free form row by row. The model's distribution is masked and renormalized at
every step, so every poem is well formed by construction; nothing is patched afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..forms import TOKEN_CLASSES, TokenClass, split_lines
from ..glyphs import drawable
from ..model import LanguageModel
from ..rerank import Reranker
from ..steppers import Int8Stepper, Stepper, int8_available
from ..vocab import MAX_TITLE, Vocab
from .choice import Chooser, Streams
from .keywords import fixed_rows, free_rows
from .masks import VerseRules, token_class_masks
from .planning import retire, title_end, write_head
from .rank import GeneratedPoem, best_so_far, resampled, score
from .request import SampleOptions


class Decoder:
    """Writes the candidates of a batch of poems from a model under SampleOptions (Generator picks the
    best of each poem)."""

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
        self.chooser = Chooser()

    def _titles(self, opts: SampleOptions, gen: Streams, on_title, end: int | None = None
                ) -> tuple[list[str], torch.Tensor, object]:
        """One title per poem (given, or written by the model), with the logits and state after the
        token `end` that follows it (<sep> by default, or the start of the head: planning.title_end)."""
        vocab, num = self.vocab, opts.num
        end = vocab.sep_id if end is None else end
        if opts.title is not None:
            ids = [vocab.bos_id, *vocab.encode(opts.title), end]
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
            choice, _ = self.chooser.choose(logits.float(), [self.class_masks[rows]], opts, gen.rows(poems))
            choice[torch.tensor([len(titles[r]) >= MAX_TITLE for r in poems])] = vocab.sep_id
            for i, r in enumerate(poems):
                if int(choice[i]) == vocab.sep_id:
                    if on_title:
                        on_title(r, "".join(titles[r]))
                else:
                    titles[r].append(vocab.tokens[int(choice[i])])
            ended = choice == vocab.sep_id  # the end of the title: `end` is what the model reads
            logits, state = self.stepper.step(torch.where(ended, end, choice), state)
            alive, logits, state = retire(self.stepper, ended, alive, logits, state, final_logits, final_state)
            if alive.numel() == 0:
                break
        return ["".join(t) for t in titles], final_logits, final_state

    def candidates(self, opts: SampleOptions, best_of: int, on_char=None, on_title=None,
                   verse: VerseRules | None = None, first: int = 0, cuts: tuple[tuple[float, float], ...] = (),
                   on_step: Callable[[float], None] | None = None) -> list[GeneratedPoem]:
        """The candidates of one batch, poem by poem (best_of rows per poem, sharing its title), each
        with its score; the poems are those of index first … first + num - 1 of the request (see
        Streams). `verse` applies to the fixed forms only. `cuts` (a schedule like CUTS): in a
        fixed form, the poems come with as many candidates as the last cut keeps (_decode_fixed_form);
        empty: all best_of, each written to the end. `on_step(share)` hears after each character the
        share of the bodies written (free form: of --max-chars, so it may end early)."""
        streams = Streams.for_poems(opts.seed, first, opts.num)
        end = title_end(self.vocab, opts)
        titles, logits, state = self._titles(opts, streams, on_title, end)
        plans = None
        if end != self.vocab.sep_id:
            plans, logits, state = write_head(self, opts, streams, logits, state)
        gen = streams.per_row(best_of)
        rows = opts.num * best_of
        poem_of_row = torch.arange(opts.num).repeat_interleave(best_of)
        logits, state = logits[poem_of_row], self.stepper.select(state, poem_of_row)
        if opts.form is None:
            bodies, logprob = self._decode_free_form(opts, rows, logits, state, gen, on_char, on_step)
            poem_of = poem_of_row.tolist()
        else:
            bodies, logprob, poem_of = self._decode_fixed_form(opts, rows, logits, state, gen, verse, on_char,
                                                               first * best_of, best_of, cuts, on_step)
        return [GeneratedPoem(title=titles[p], body=body, logprob=float(lp), lines=split_lines(body),
                              score=score(float(lp), body), candidates=best_of, plan=plans[p] if plans else None)
                for p, body, lp in zip(poem_of, bodies, logprob, strict=True)]

    def _decode_fixed_form(self, opts: SampleOptions, rows: int, logits: torch.Tensor, state, gen: Streams,
                           verse: VerseRules | None, on_char, first_row: int = 0, best_of: int = 1,
                           cuts: tuple[tuple[float, float], ...] = (), on_step: Callable[[float], None] | None = None
                           ) -> tuple[list[str], torch.Tensor, list[int]]:
        """The bodies of `rows` candidates of the fixed form opts.form (best_of consecutive rows per
        poem), from the logits and state after their titles, their log-probabilities (float64) and the
        poem of each. Every row stands at the same line and column, so one grammar serves them all, and
        all reach the end at the same step. `cuts`: (share of the lines, share of candidates) pairs;
        when that share of the lines is written, only each poem's best rows by the score of what they
        have written (rank.best_so_far) go on, that share of best_of rounded up: the rest of the poem costs
        fewer rows. A cut the prompt reaches is skipped (its rows are all alike there). A kept row is
        written as it would have been without the others (its random numbers and rules are its own;
        on the int8 path its arithmetic too), so pruning only drops candidates, never changes one.
        Under opts.search "line" (no cuts then), at the start of every line after the first each poem's
        rows go on from copies of its better half (rank.resampled): a row takes over its parent's lines,
        state and rules, and keeps its own random numbers, so two copies part at once."""
        vocab, form = self.vocab, opts.form
        grammar = opts.body_grammar()
        verse_state = verse.start(form, rows, opts.seed, first_row) if verse is not None else None
        keywords = None
        if opts.keywords:
            keywords = fixed_rows(vocab, opts.keywords, form, opts.acrostic, rows, verse_state,
                                  verse.masks.tone if verse is not None else None)
        prompt = list(opts.prompt)
        logprob = torch.zeros(rows, dtype=torch.float64)
        columns: list[torch.Tensor] = []  # (rows,): the token each row took at each step
        survivors = torch.arange(rows)  # each row's index among the rows first drawn
        cuts = {int(form.lines * at): math.ceil(best_of * share) for at, share in cuts  # line: rows kept per poem
                if int(form.lines * at) * (form.chars + 1) > len(opts.prompt)}  # past the prompt: rows differ
        each, steps = best_of, form.lines * (form.chars + 1) + 1  # the characters, their marks and the end
        for step in range(steps):
            token_class, head = grammar.expect()
            line, col = grammar.line, grammar.col
            if opts.search == "line" and col == 0 and 0 < line < form.lines and each > 1 and not prompt:
                kept = resampled(vocab, self.reranker, columns, logprob, each, form.key)
                logprob, columns = logprob[kept], [c[kept] for c in columns]
                logits, state = logits[kept], self.stepper.select(state, kept)
                if verse_state is not None:
                    verse_state.keep(kept)
                if keywords is not None:
                    keywords.keep(kept)
            if col == 0 and cuts.get(line, each) < each:
                kept = best_so_far(vocab, self.reranker, columns, logprob, each, cuts[line], form.key)
                survivors, logprob, columns = survivors[kept], logprob[kept], [c[kept] for c in columns]
                logits, state, gen = logits[kept], self.stepper.select(state, kept), gen.keep(kept)
                if verse_state is not None:
                    verse_state.keep(kept)
                if keywords is not None:
                    keywords.keep(kept)
                rows, each = len(kept), cuts[line]
            given = prompt.pop(0) if prompt else head
            forced = torch.full((rows,), vocab.stoi[given] if given is not None else -1, dtype=torch.long)
            class_row = self.class_index[token_class]
            masks = [self.class_masks[class_row]]
            if keywords is not None and token_class == TokenClass.HAN:
                owed, banned = keywords.step(line, col, len(vocab))
                forced = torch.where(forced >= 0, forced, owed)
                masks += [banned] if banned is not None else []
            if verse_state is not None and token_class == TokenClass.HAN:
                masks += [m for m in verse_state.masks(line, col) if m is not None]
            choice, choice_logprob = self.chooser.next_tokens(logits, masks, forced, opts, gen,
                                                       only_one=self.single_token[class_row])
            logprob += choice_logprob.double()
            if verse_state is not None:
                verse_state.advance(line, col, choice)
            if keywords is not None and token_class == TokenClass.HAN:
                keywords.advance_all(line, col, choice)
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
        keywords = free_rows(vocab, opts.keywords, opts.acrostic, rows) if opts.keywords else None
        for step in range(longest + 64):  # a bound no poem reaches
            done = finished.tolist()
            class_rows = []  # each row's class of token: a row of class_masks
            forced = torch.full((rows,), -1, dtype=torch.long)
            banned = None
            at = [(g.line, g.col) for g in grammars]
            for r, grammar in enumerate(grammars):
                token_class, head = grammar.expect()
                if keywords is not None and not done[r]:
                    token_class, owed, not_here = keywords.free_rule(r, grammar, token_class)
                    if head is None and owed >= 0:
                        forced[r] = owed
                    if not_here:
                        banned = torch.ones(rows, len(vocab)) if banned is None else banned
                        banned[r, not_here] = 0.0
                class_rows.append(self.class_index[TokenClass.EOS if done[r] else token_class])
                written = len(bodies[r])
                given = None if done[r] else opts.prompt[written] if written < len(opts.prompt) else head
                if given is not None:
                    forced[r] = vocab.stoi[given]
            masks = [self.class_masks[torch.tensor(class_rows)], *([banned] if banned is not None else [])]
            choice, choice_logprob = self.chooser.next_tokens(logits, masks, forced, opts, gen)
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
                if keywords is not None:
                    keywords.advance(r, *at[r], token)
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
