"""Vocabulary masks for constrained decoding: the rules of forms and acrostics, and 格律 under --strict
(tones at the strict positions, one 平水韵 rhyme group, no repeated rhyme character)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import SampleOptions
from .errors import UsageError
from .forms import RULES, BodyConstraint, Form, Rule
from .prosody import BOTH, PING, ZE, find_group, get_template, templates
from .text import COMMA, LINE_END, STOPS
from .vocab import SPECIALS, Vocab


def rule_masks(vocab: Vocab) -> tuple[torch.Tensor, dict[str, int]]:
    """Boolean masks (len(RULES)+2, V) of the tokens each rule allows and their row index; the last
    two rows are the title masks (title start: characters; title: characters or <sep>)."""
    V = len(vocab)
    is_mark = torch.zeros(V, dtype=torch.bool)
    is_stop = torch.zeros(V, dtype=torch.bool)
    is_han = torch.zeros(V, dtype=torch.bool)
    for i, t in enumerate(vocab.tokens):
        if t in SPECIALS:
            continue
        if t in LINE_END:
            is_mark[i] = True
            is_stop[i] = t in STOPS
        else:
            is_han[i] = True
    comma = torch.zeros(V, dtype=torch.bool)
    if "，" in vocab:
        comma[vocab.stoi["，"]] = True
    eos = torch.zeros(V, dtype=torch.bool)
    eos[vocab.eos_id] = True
    by_rule = {
        Rule.HAN: is_han, Rule.HAN_OR_MARK: is_han | is_mark, Rule.HAN_OR_STOP: is_han | is_stop,
        Rule.HAN_OR_EOS: is_han | eos, Rule.COMMA: comma, Rule.STOP: is_stop, Rule.EOS: eos,
    }
    for rule, mask in by_rule.items():
        if not mask.any():
            raise UsageError(f"the model's vocabulary has no token for rule {rule}: use another checkpoint")
    sep = torch.zeros(V, dtype=torch.bool)
    sep[vocab.sep_id] = True
    masks = torch.stack([by_rule[r] for r in RULES] + [is_han, is_han | sep])
    return masks, {r: i for i, r in enumerate(RULES)}


# ---------------------------------------------------------------------------------------------
# --strict


class ProsodyMasks:
    """Vocabulary masks for tones and rhyme groups (known tones only, so every pick is certain)."""

    def __init__(self, vocab: Vocab, tones, rhymes):
        V = len(vocab)
        self.vocab = vocab
        self.rhymes = rhymes
        self.ping = torch.zeros(V, dtype=torch.bool)
        self.ze = torch.zeros(V, dtype=torch.bool)
        self.ze_only = torch.zeros(V, dtype=torch.bool)  # line ends that must not read as a rhyme
        for i, t in enumerate(vocab.tokens):
            tone = tones.tone(t) if t not in SPECIALS and t not in LINE_END else None
            self.ping[i] = tone in (PING, BOTH)
            self.ze[i] = tone in (ZE, BOTH)
            self.ze_only[i] = tone == ZE
        self.group_masks: dict[str, torch.Tensor] = {}
        for group, members in rhymes.groups.items():
            m = torch.zeros(V, dtype=torch.bool)
            ids = [vocab.stoi[c] for c in members if c in vocab.stoi]
            if ids:
                m[ids] = True
            self.group_masks[group] = m & self.ping

    def tone(self, want: str) -> torch.Tensor:
        return self.ping if want == "平" else self.ze


class StrictConstraint(BodyConstraint):
    """A fixed form under one template: tones at the strict positions (2nd, 4th, 6th, line end, and
    the positions that would make 孤平 or 三平尾), one 平声 rhyme group, no repeated rhyme character."""

    def __init__(self, form: Form, template, masks: ProsodyMasks, heads: str = "", groups: set[str] | None = None):
        super().__init__(form, heads)
        self.template = template
        self.masks = masks
        self.patterns = template.patterns()
        self.rhyme_lines = set(template.rhyme_lines())
        self.groups = set(groups) if groups else set(masks.group_masks)
        self.used: list[str] = []
        self.kinds = template.kinds

    def strict_positions(self, line: int) -> set[int]:
        chars = self.form.chars
        positions = set(self.template.strict_positions())
        kind = self.kinds[line]
        if kind == "B":  # 平平仄仄平: a 仄 first syllable leaves its 平 alone (孤平)
            positions.add(chars - 5)
        if kind == "D":  # 仄仄仄平平: a 平 third syllable ends in three 平 (三平尾)
            positions.add(chars - 3)
        return positions

    def extra_mask(self) -> torch.Tensor | None:
        """The tokens the template allows at the next position, or None when it is free."""
        if self.done or self.line >= self.form.lines or self.col >= self.form.chars:
            return None
        if self.col == self.form.chars - 1 and self.line in self.rhyme_lines:
            mask = torch.zeros_like(self.masks.ping)
            for g in self.groups:
                mask |= self.masks.group_masks[g]
            for ch in self.used:
                mask[self.masks.vocab.stoi[ch]] = False
            return mask
        if self.col == self.form.chars - 1:  # an unrhymed line end: plainly 仄, never a possible rhyme
            return self.masks.ze_only
        if self.col in self.strict_positions(self.line):
            return self.masks.tone(self.patterns[self.line][self.col])
        return None

    def skip(self) -> None:
        """Move past the next position without choosing its character (a dry run of the template)."""
        rule, _ = self.rule()
        super().advance(COMMA if rule == Rule.COMMA else STOPS[0] if rule == Rule.STOP else "?")

    def advance(self, ch: str) -> None:
        if (ch and self.line < self.form.lines and self.col == self.form.chars - 1
                and self.line in self.rhyme_lines):
            self.groups &= self.masks.rhymes.of_char.get(ch, set())
            self.used.append(ch)
        super().advance(ch)


def strict_factory(opts: SampleOptions, masks: ProsodyMasks, template_key: str | None, rhyme: str | None,
                   seed: int) -> Callable[[int], StrictConstraint]:
    """A maker of per-row strict constraints: the template given, or one drawn per row among those
    the prompt and heads allow. Raises UsageError when the given characters fit no template."""
    import random

    if opts.form is None:
        raise UsageError("--strict needs a regulated form: --form wujue, qijue, wulv or qilv")
    groups = {find_group(masks.rhymes, rhyme)} if rhyme else None
    choices = [get_template(opts.form, template_key)] if template_key else templates(opts.form)

    def fits(template) -> str | None:
        c = StrictConstraint(opts.form, template, masks, opts.acrostic, groups)
        forced = list(opts.prompt)
        while not c.done and c.line < opts.form.lines:
            rule, head = c.rule()
            ch = forced.pop(0) if forced else head
            if ch is None:  # a free position: move on without choosing a rhyme
                c.skip()
                continue
            extra = c.extra_mask()
            if ch in masks.vocab.stoi and extra is not None and not bool(extra[masks.vocab.stoi[ch]]):
                return f"{ch!r} at line {c.line + 1}, character {c.col + 1}"
            c.advance(ch)
        return None

    problems = {t.key: fits(t) for t in choices}
    usable = [t for t in choices if problems[t.key] is None]
    if not usable:
        which = choices[0].name if template_key else "any template"
        raise UsageError(f"the given characters make {which} impossible ({problems[choices[0].key]} breaks the "
                         "平仄 or rhyme): change --prompt/--acrostic or the template")
    rng = random.Random(seed)
    picks: dict[int, object] = {}

    def make(row: int) -> StrictConstraint:
        if row not in picks:
            picks[row] = rng.choice(usable)
        return StrictConstraint(opts.form, picks[row], masks, opts.acrostic, groups)

    return make
