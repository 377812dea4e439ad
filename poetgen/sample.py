"""Decoding: temperature, top-k and top-p sampling under the constraints of forms and acrostics.

The model's distribution is masked and renormalized at every step, so every poem is well formed
by construction; nothing is patched afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import UsageError
from .forms import LINE_END, RULES, STOPS, BodyConstraint, Form, Rule, check_heads, check_prompt, split_lines
from .model import LanguageModel
from .vocab import SPECIALS, Vocab

MAX_TITLE = 20


@dataclass
class SampleOptions:
    prompt: str = ""
    title: str | None = None
    form: Form | None = None
    acrostic: str = ""
    num: int = 1
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    max_chars: int = 200

    def validate(self) -> SampleOptions:
        if self.temperature < 0 or math.isnan(self.temperature):
            raise UsageError(f"--temperature must be 0 (greedy) or positive, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if self.num < 1:
            raise UsageError(f"--num must be at least 1, got {self.num}")
        if self.max_chars < 2:
            raise UsageError(f"--max-chars must be at least 2, got {self.max_chars}")
        if self.acrostic:
            check_heads(self.acrostic, self.form)
        check_prompt(self.prompt, self.constraint)
        return self

    def constraint(self) -> BodyConstraint:
        # the budget never cuts the prompt short
        return BodyConstraint(self.form, self.acrostic, max(self.max_chars, len(self.prompt) + 1))


@dataclass
class GeneratedPoem:
    title: str
    body: str
    logprob: float  # under the unconstrained model at temperature 1, body and end token
    lines: list[str] = field(default_factory=list)


class Stepper:
    """Token-at-a-time inference without per-call module overhead.

    For an LSTM, the first layer's input gates of every token are precomputed into a table (an
    embedding lookup replaces a matrix product) and each step is a few fused addmm calls; other
    cells fall back to the module."""

    def __init__(self, model: LanguageModel):
        self.model = model.eval()
        cfg = model.config
        self.fast = cfg.cell == "lstm"
        if not self.fast:
            return
        rnn = model.rnn
        with torch.no_grad():
            emb = model.embed.weight
            self.table0 = (emb @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0).contiguous()  # (V, 4H)
            self.w_hh0 = rnn.weight_hh_l0.T.contiguous()  # (H, 4H)
            self.w_cat, self.b_cat = [], []
            for layer in range(1, cfg.num_layers):
                w = torch.cat([getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")], dim=1)
                self.w_cat.append(w.T.contiguous())  # (2H, 4H)
                self.b_cat.append(getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}"))
            self.proj = (model.proj.weight.T.contiguous(), model.proj.bias) if model.proj is not None else None
            self.head_w = model.head.weight.T.contiguous()  # (E, V)
            self.head_b = model.head.bias

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Run a (B, T) prefix through the model: logits of the last position (B, V) and the state."""
        logits, state = self.model(ids)
        if self.fast:
            h, c = state
            state = [(h[i], c[i]) for i in range(h.size(0))]
        return logits[:, -1], state

    def expand(self, state, rows: int):
        """Repeat a batch-1 state for `rows` rows."""
        if self.fast:
            return [(h.expand(rows, -1).contiguous(), c.expand(rows, -1).contiguous()) for h, c in state]
        if isinstance(state, tuple):
            return tuple(s.expand(-1, rows, -1).contiguous() for s in state)
        return state.expand(-1, rows, -1).contiguous()

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One token per row, ids (B,): next-token logits (B, V) and the new state."""
        if not self.fast:
            logits, state = self.model(ids[:, None], state)
            return logits[:, 0], state
        new_state = []
        h, c = state[0]
        gates = torch.addmm(self.table0[ids], h, self.w_hh0)
        x = None
        for layer in range(len(state)):
            if layer > 0:
                h, c = state[layer]
                gates = torch.addmm(self.b_cat[layer - 1], torch.cat([x, h], dim=1), self.w_cat[layer - 1])
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            new_state.append((x, c))
        if self.proj is not None:
            x = torch.addmm(self.proj[1], x, self.proj[0])
        return torch.addmm(self.head_b, x, self.head_w), new_state


def rule_masks(vocab: Vocab) -> tuple[torch.Tensor, dict[str, int], torch.Tensor]:
    """Boolean masks (len(RULES)+2, V) of the tokens each rule allows, their row index, and
    the title masks (title start: characters; title: characters or <sep>)."""
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
    return masks, {r: i for i, r in enumerate(RULES)}, masks[-2:]


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the top-k tokens and/or the smallest set whose probability reaches top_p (per row)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
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
        self.masks, self.rule_index, _ = rule_masks(vocab)
        self.title_start_row = len(RULES)
        self.title_row = len(RULES) + 1

    def generate(self, opts: SampleOptions, on_char: Callable[[int, str], None] | None = None,
                 constraint_for_row: Callable[[int], BodyConstraint] | None = None) -> list[GeneratedPoem]:
        """Sample opts.num poems as one batch. `on_char(row, ch)` sees each body character as it comes;
        `constraint_for_row` replaces the plain form constraint (--strict)."""
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

        constraints = [constraint_for_row(r) if constraint_for_row else opts.constraint() for r in range(B)]
        in_title = [not have_title] * B
        titles = [[] for _ in range(B)]
        bodies = [[] for _ in range(B)]
        forced_prompt = [list(opts.prompt) for _ in range(B)]
        logprob = torch.zeros(B, dtype=torch.float64)
        finished = torch.zeros(B, dtype=torch.bool)
        step_limit = MAX_TITLE + opts.max_chars + 64
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
            if opts.temperature == 0:
                choice = logits.float().masked_fill(~allowed, float("-inf")).argmax(-1)
            else:
                scaled = (logits.float() / opts.temperature).masked_fill(~allowed, float("-inf"))
                scaled = filter_logits(scaled, opts.top_k, opts.top_p)
                choice = draw(scaled.softmax(-1), gen)
            choice = torch.where(forced >= 0, forced, choice)
            logprob += torch.where(in_body, model_logp.gather(1, choice[:, None]).squeeze(1).double(), 0.0)
            for r in range(B):
                if finished[r]:
                    continue
                tok = int(choice[r])
                if in_title[r]:
                    if tok == vocab.sep_id:
                        in_title[r] = False
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
# --strict: 格律 enforced during decoding


class ProsodyMasks:
    """Vocabulary masks for tones and rhyme groups (known tones only, so every pick is certain)."""

    def __init__(self, vocab: Vocab, tones, rhymes):
        from .prosody import BOTH, PING, ZE

        V = len(vocab)
        self.vocab = vocab
        self.tones = tones
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

    from .prosody import find_group, get_template, templates

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
                BodyConstraint.advance(c, "，" if rule == Rule.COMMA else "。" if rule == Rule.STOP else "?")
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
