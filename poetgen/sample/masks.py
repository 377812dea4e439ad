"""Vocabulary masks for constrained decoding: the classes of token a body's grammar allows (forms and
acrostics), and the rules of verse in the fixed forms: one 平水韵 rhyme group at the rhyme positions
with no rhyme character twice, no character a third time (not twice under --strict) save 叠字, and
under --strict the tonal template with every strict position filled by a character whose usual
reading is the tone required.

The verse rules are vectorized over the rows of a batch: in a fixed form every row stands at the
same line and column, so one step's masks are a few (rows, vocabulary) tensor operations."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..forms import ATTESTED_DOUBLE, TOKEN_CLASSES, Form, TokenClass
from ..prosody import PING, ZE, RhymeTable, Template, ToneTable, find_group, get_template, templates
from ..text import LINE_END, STOPS
from ..vocab import MARKERS, Vocab
from .keywords import FREE, WANT_PING, WANT_ZE, starts
from .request import SampleOptions


def token_class_masks(vocab: Vocab, drawable: Callable[[str], bool] | None = None
                      ) -> tuple[torch.Tensor, dict[str, int]]:
    """Boolean masks (len(TOKEN_CLASSES)+2, V) of the tokens in each class and each class's row; the
    last two rows are the title masks (title start: characters; title: characters or <sep>). Characters
    `drawable` rejects are never drawn (a model's own variant forms; see glyphs.drawable)."""
    V = len(vocab)
    # each mask made from one list, not 6,800 single writes into a tensor
    is_mark = torch.tensor([t in LINE_END and t not in MARKERS for t in vocab.tokens], dtype=torch.bool)
    is_stop = torch.tensor([t in STOPS and t not in MARKERS for t in vocab.tokens], dtype=torch.bool)
    is_han = torch.tensor([t not in MARKERS and t not in LINE_END and (drawable is None or drawable(t))
                           for t in vocab.tokens], dtype=torch.bool)
    comma = torch.zeros(V, dtype=torch.bool)
    if "，" in vocab:
        comma[vocab.stoi["，"]] = True
    eos = torch.zeros(V, dtype=torch.bool)
    eos[vocab.eos_id] = True
    by_class = {
        TokenClass.HAN: is_han, TokenClass.HAN_OR_MARK: is_han | is_mark, TokenClass.HAN_OR_STOP: is_han | is_stop,
        TokenClass.HAN_OR_EOS: is_han | eos, TokenClass.COMMA: comma, TokenClass.STOP: is_stop, TokenClass.EOS: eos,
    }
    for name, mask in by_class.items():
        if not mask.any():
            raise UsageError(f"the model's vocabulary has no token of the class {name}: use another checkpoint")
    sep = torch.zeros(V, dtype=torch.bool)
    sep[vocab.sep_id] = True
    masks = torch.stack([by_class[c] for c in TOKEN_CLASSES] + [is_han, is_han | sep])
    return masks, {c: i for i, c in enumerate(TOKEN_CLASSES)}


# ---------------------------------------------------------------------------------------------
# The rules of verse


class ProsodyMasks:
    """Vocabulary masks from a tone table and 平水韵: characters whose usual reading is 平 or 仄, and
    a (groups, V) matrix of the 平声 groups' members that usually read 平."""

    def __init__(self, vocab: Vocab, tones: ToneTable, rhymes: RhymeTable, doubles: dict[str, int] | None = None):
        V = len(vocab)
        self.vocab = vocab
        self.rhymes = rhymes
        # the characters a 叠字 may double: those poets double ATTESTED_DOUBLE+ times (all, with no table)
        self.may_double = torch.ones(V, dtype=torch.bool)
        if doubles is not None:
            self.may_double[:] = False
            ids = [vocab.stoi[c] for c, n in doubles.items() if n >= ATTESTED_DOUBLE and c in vocab.stoi]
            self.may_double[ids] = True
        usual = [None if t in MARKERS or t in LINE_END else tones.usual(t) for t in vocab.tokens]
        self.ping = torch.tensor([u == PING for u in usual], dtype=torch.bool)  # (one tensor from a list,
        self.ze = torch.tensor([u == ZE for u in usual], dtype=torch.bool)  # not 6,800 single writes)
        self.group_names = sorted(rhymes.groups)
        self.groups = torch.zeros(len(self.group_names), V, dtype=torch.bool)
        for g, name in enumerate(self.group_names):
            ids = [vocab.stoi[c] for c in rhymes.groups[name] if c in vocab.stoi]
            if ids:
                self.groups[g, ids] = True
        if tones.usual_tones:  # rhyme with the characters whose usual reading is 平 (with no table: any member)
            self.groups &= self.ping

    def tone(self, ch: str) -> tuple[bool, bool]:
        """Whether the usual reading of `ch` (in the vocabulary) is 平, and whether it is 仄."""
        i = self.vocab.stoi[ch]
        return bool(self.ping[i]), bool(self.ze[i])

    def group_index(self, name: str) -> int:
        return self.group_names.index(name)


# The default rules' weight on a character's second use in a poem, per form: the model, and best-of-N
# ranking by likelihood, repeat characters two to five times as often as poets do; these weights
# bring the mean of distinct characters used twice per poem near the train split's real poems'
# (0.38, 0.53, 0.46, 0.92). Fitted for 0.8's default (line search over 16, temperature 0.6) by
# bisection over 200 poems per form and trial (tools/fit_second_use.py, seed 7001: 0.7's weights, 0.07
# 0.053 0.017 0.019, fitted for whole-poem ranking, left line search's poems repeating about 1.3 times
# as often as poets); checked on seed 1 (see the README). The second weight is a 叠字's (the
# character just written, again at once), which the model also overuses; 0.6's values still hold.
SECOND_USE_WEIGHT = {"wujue": (0.043, 0.33), "qijue": (0.047, 0.45), "wulv": (0.012, 0.33), "qilv": (0.012, 0.28)}


@dataclass
class VerseRules:
    """The rules a fixed-form poem is decoded under (see the module docstring)."""

    masks: ProsodyMasks
    rhyme: bool = True  # rhyme positions take one 平声 group, no rhyme character twice
    group: str | None = None  # the 平声 group to rhyme in (--rhyme CHAR), or any
    max_uses: int | None = 2  # a character at most this often (叠字 pairs count once); None: no limit
    again: float = 1.0  # the weight of a character's second use (1: as the model says; 叠字 pairs exempt)
    doubled: float = 1.0  # the weight of a 叠字: the previous character again, at once
    strict_templates: list[Template] | None = None  # --strict: one of these per row, drawn by the seed

    def start(self, form: Form, rows: int, seed: int, first_row: int = 0) -> VerseState:
        """The state of these rules at the start of a poem, for `rows` rows (under --strict, each row's
        template drawn by the seed and the row's index in the request, first_row + r)."""
        picks = None
        if self.strict_templates:
            picks = [random.Random(f"{seed}:{first_row + r}").choice(self.strict_templates) for r in range(rows)]
        return VerseState(self, form, rows, picks)


def strict_kinds_positions(template: Template, line: int) -> set[int]:
    """The strict positions of one line: 2nd, 4th, 6th, the end, and those that would make 孤平
    (平平仄仄平 must keep its first 平) or 三平尾 (仄仄仄平平 must keep its third 仄)."""
    chars = template.form.chars
    positions = set(template.strict_positions())
    kind = template.kinds[line]
    if kind == "B":
        positions.add(chars - 5)
    if kind == "D":
        positions.add(chars - 3)
    return positions


class VerseState:
    """The verse rules' state over a batch of rows that stand at the same position: what each row has
    used and rhymed, and the masks these leave for the next character."""

    FREE, WANT_PING, WANT_ZE = FREE, WANT_PING, WANT_ZE  # one table, keywords.py's (which places keywords by it)

    def __init__(self, rules: VerseRules, form: Form, rows: int, templates_per_row: list[Template] | None):
        prosody = rules.masks
        V = len(prosody.vocab)
        self.double_weight = torch.where(prosody.may_double, rules.doubled, 0.0)  # (V,): a 叠字 of each character
        self.rules, self.form, self.prosody = rules, form, prosody
        self.uses = torch.zeros(rows, V, dtype=torch.int16)
        self.prev = torch.full((rows,), -1, dtype=torch.long)  # the previous character in the line
        self.prev_doubled = torch.zeros(rows, dtype=torch.bool)  # it was itself the second of a 叠字 pair
        self.rhymed = torch.zeros(rows, V, dtype=torch.bool)  # characters that have ended a line
        groups = torch.ones(rows, len(prosody.group_names), dtype=torch.bool)
        if rules.group is not None:
            groups[:] = False
            groups[:, prosody.group_index(rules.group)] = True
        self.groups_open = groups
        L, C = form.lines, form.chars
        self.rhyme_line = torch.zeros(rows, L, dtype=torch.bool)
        self.want = torch.zeros(rows, L, C, dtype=torch.uint8)
        if templates_per_row is None:
            if rules.rhyme:
                self.rhyme_line[:, 1::2] = True  # even lines; the first line's end is free
        else:
            for r, t in enumerate(templates_per_row):
                patterns = t.patterns()
                for line in range(L):
                    self.rhyme_line[r, line] = line in t.rhyme_lines()
                    for p in strict_kinds_positions(t, line):
                        self.want[r, line, p] = self.WANT_PING if patterns[line][p] == PING else self.WANT_ZE
        self.strict = templates_per_row is not None
        # default rules: the free first line ends in a character that does not usually read 平, or in
        # an open group, and then the poem rhymes with it (首句入韵): no reader takes a 平 end of
        # another group for a failed rhyme
        self.first_opens = rules.rhyme and not self.strict
        self.tone_masks = torch.stack([torch.ones(V), prosody.ping.float(), prosody.ze.float()])
        self.ze = prosody.ze.float()
        # 1.0 where a character may still be used: kept up to date in advance(), so a step costs
        # no pass over (rows, V) for repetition
        self.soft = torch.ones(rows, V) if rules.max_uses is not None else None
        self.excepted: tuple[torch.Tensor, torch.Tensor] | None = None  # the 叠字 entries opened for one step

    def masks(self, line: int, col: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(hard, soft) float 0/1 masks (rows, V) for the character at (line, col): hard for rhyme and
        tones, soft for repetition (dropped for a row only if nothing else is left). The soft mask is
        this object's own state: read it before the next advance()."""
        if line >= self.form.lines or col >= self.form.chars:
            return None, None
        hard = None
        if col == self.form.chars - 1:
            rhyming = self.rhyme_line[:, line]
            if line == 0 and self.first_opens:
                in_group = (self.groups_open.float() @ self.prosody.groups.float()) > 0
                hard = (in_group | ~self.prosody.ping).float()
            elif bool(rhyming.any()):
                in_group = (self.groups_open.float() @ self.prosody.groups.float()) > 0  # (rows, V)
                hard = torch.where(rhyming[:, None], in_group & ~self.rhymed, True).float()
            if self.strict:  # an unrhymed line end is plainly 仄, so no reader takes it for a rhyme
                plain = torch.where(rhyming[:, None], 1.0, self.ze)
                hard = plain if hard is None else hard.mul_(plain)
        elif self.strict:
            hard = self.tone_masks[self.want[:, line, col].long()]
        if self.soft is not None and col > 0:  # 叠字: the previous character may come again, once, if poets double it
            rows = torch.nonzero((self.prev >= 0) & ~self.prev_doubled).squeeze(1)
            self.excepted = (rows, self.prev[rows])
            self.soft[self.excepted] = self.double_weight[self.excepted[1]]
        return hard, self.soft

    def advance(self, line: int, col: int, tokens: torch.Tensor) -> None:
        """Record the characters (rows,) just placed at (line, col)."""
        if self.excepted is not None:  # close the 叠字 entries again (those still under the limit reopen below)
            self._refresh(*self.excepted)
            self.excepted = None
        if line >= self.form.lines or col >= self.form.chars:
            self.prev[:] = -1
            self.prev_doubled[:] = False
            return
        rows = torch.arange(tokens.size(0))
        doubled = (tokens == self.prev) & ~self.prev_doubled & (col > 0)
        counted_rows, counted = rows[~doubled], tokens[~doubled]
        self.uses[counted_rows, counted] += 1
        self._refresh(counted_rows, counted)
        self.prev_doubled = doubled
        self.prev = tokens.clone()
        if col == self.form.chars - 1:
            self.rhymed[rows, tokens] = True  # a rhyme never repeats a line's end, the free first line's too
            rhyming = self.rhyme_line[:, line]
            if line == 0 and self.first_opens:  # a first line that ends in an open group rhymes (首句入韵)
                joined = self.groups_open & self.prosody.groups[:, tokens].T
                rhyming = rhyming | joined.any(1)
            r = rows[rhyming]
            self.groups_open[r] &= self.prosody.groups[:, tokens[r]].T

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indexes into the current rows, in this order), between two characters."""
        for name in ("uses", "prev", "prev_doubled", "rhymed", "groups_open", "rhyme_line", "want", "soft"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[rows])
        self.excepted = None  # closed by advance(): keep() comes between a character and the next masks()

    def _refresh(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        if self.soft is not None:
            used = self.uses[rows, cols]
            self.soft[rows, cols] = torch.where(used >= self.rules.max_uses, 0.0,
                                                torch.where(used > 0, self.rules.again, 1.0))


def strict_templates(opts: SampleOptions, masks: ProsodyMasks, template_key: str | None,
                     group: str | None) -> list[Template]:
    """The templates of the fixed form opts.form that the given characters (prompt, acrostic heads)
    allow under --strict; UsageError naming the first character that breaks them when none does."""
    choices = [get_template(opts.form, template_key)] if template_key else templates(opts.form)
    problems = {t.key: _first_conflict(t, opts, masks, group) for t in choices}
    usable = [t for t in choices if problems[t.key] is None]
    if not usable:
        which = choices[0].name if template_key else "any template"
        raise UsageError(f"the given characters make {which} impossible ({problems[choices[0].key]} breaks the "
                         "平仄 or rhyme): change --prompt/--acrostic/--keywords or the template")
    return usable


def _first_conflict(template: Template, opts: SampleOptions, masks: ProsodyMasks, group: str | None) -> str | None:
    """Where the prompt or heads break `template`, or None: a dry run of one row with the given characters."""
    state = VerseRules(masks, group=group, max_uses=None, strict_templates=[template]).start(opts.form, 1, 0)
    grammar = opts.body_grammar()
    given = list(opts.prompt)
    stoi = masks.vocab.stoi
    while not grammar.done and grammar.line < opts.form.lines:
        token_class, head = grammar.expect()
        ch = given.pop(0) if given else head
        if ch is None:  # a free position: move on without choosing
            grammar.advance("，" if token_class == TokenClass.COMMA else STOPS[0] if token_class == TokenClass.STOP
                            else "?")
            continue
        line, col = grammar.line, grammar.col
        hard, _ = state.masks(line, col)
        if ch in stoi and hard is not None and not bool(hard[0, stoi[ch]]):
            return f"{ch!r} at line {line + 1}, character {col + 1}"
        if ch in stoi:
            state.advance(line, col, torch.tensor([stoi[ch]]))
        grammar.advance(ch)
    for line, k in enumerate(opts.keywords):
        if not starts(k, opts.form.chars, line < len(opts.acrostic), state.want[0, line].tolist(), masks.tone):
            return f"the keyword {k} of line {line + 1}"
    return None


def verse_rules(opts: SampleOptions, masks: ProsodyMasks, rhyme: bool = True, strict: bool = False,
                template_key: str | None = None, rhyme_char: str | None = None) -> VerseRules | None:
    """The rules of verse for options in the model's script: None for free form, which has none
    (sample_request refuses --strict and --rhyme without a fixed form). Raises UsageError when
    the rhyme character or the given characters leave nothing to draw."""
    if opts.form is None:
        if strict or rhyme_char:
            raise ValueError("rules of verse need a fixed form: check the request with sample_request")
        return None
    group = find_group(masks.rhymes, rhyme_char) if rhyme_char else None
    if group is not None and not bool(masks.groups[masks.group_index(group)].any()):
        raise UsageError(f"--rhyme {rhyme_char!r}: no character of its group is in the model's vocabulary")
    if strict:
        return VerseRules(masks, rhyme=True, group=group, max_uses=1,
                          strict_templates=strict_templates(opts, masks, template_key, group))
    again, doubled = SECOND_USE_WEIGHT.get(opts.form.key, (1.0, 1.0)) if rhyme else (1.0, 1.0)
    return VerseRules(masks, rhyme=rhyme, group=group if rhyme else None, max_uses=2, again=again, doubled=doubled)
