"""A sampling request: the options of `poetgen sample` (and of Model.generate) and their one validation,
before torch loads; then, against a model's vocabulary and script, in_model_script.

Each default is stated here once; the CLI shows these values in --help."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace

from ..errors import UsageError
from ..forms import BodyGrammar, Form, check_heads, check_prompt, get_form
from ..text import full_width_marks, is_han, to_script
from ..vocab import MAX_TITLE, Vocab

SAMPLE_DEVICE = "cpu"  # where `sample` computes: a poem or ten are faster in int8 on the CPU than after a GPU's start
SAMPLE_FORMATS = ("text", "json", "jsonl")  # what `poetgen sample --format` writes
SCORES = ("critic", "logprob")  # what best-of-N ranks by: see SampleOptions.score
SEARCHES = ("line", "poem")  # how best-of-N searches a fixed form: see SampleOptions.search
TEMPLATES = {"ping-plain": "平起首句不入韵", "ping-rhymed": "平起首句入韵", "ze-plain": "仄起首句不入韵",
             "ze-rhymed": "仄起首句入韵"}

MAX_NUM = 10_000  # poems per sample command; larger requests are refused
MAX_COMMAND_ROWS = MAX_NUM * 16  # candidates per sample command (--num × --best-of): --num at the default --best-of
FREE_LINE = 6  # the budget of a free-form acrostic line: five characters and a mark
MAX_CHARS = 1000  # the longest free-form body (--max-chars)
MAX_PROMPT = 1000  # characters of a --prompt: as long as the longest free-form body (--max-chars)
MAX_TEMPERATURE = 100.0  # beyond this every allowed character is equally likely anyway
NEEDS_FORM = "needs a regulated form: --form wujue, qijue, wulv or qilv"


@dataclass(frozen=True)
class SampleOptions:
    """How poems are drawn: the text they start from and the decoding settings. sample_request builds
    and checks them from the user's words; Sampler puts the text in the model's script."""

    prompt: str = ""
    title: str | None = None  # None: the model writes one
    form: Form | None = None  # None: free form
    acrostic: str = ""
    num: int = 1
    temperature: float = 0.6  # two reader panels preferred 0.6 to 0.8 (benchmarks/panels/2026-12-07-*)
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    max_chars: int = 120
    best_of: int = 16  # candidates per poem, the best kept by sample.score; 1 is plain sampling
    score: str = "critic"  # best-of-N in a fixed form: log-probability + the model's critic (rerank.py), or
    # "logprob" alone; a model without a critic, and free form, rank by log-probability
    search: str = "line"  # best-of-N in a fixed form: "line": at each line's start every poem's weaker half of
    # candidates gives way to copies of its better half, which then go on apart (readers preferred it to "poem" on
    # three of four sheets, by 0.2 on average: benchmarks/panels/2026-12-07-*); "poem": whole poems, pruned
    prune: bool = True  # search="poem" drops its weaker candidates as it goes (sample.CUTS)
    author: str | None = None  # write in this poet's manner (a model whose records name poets)
    plan: bool = True  # a model whose records carry plans writes one after the title, then the poem
    keywords: tuple[str, ...] = ()  # the plan's first keywords, each held by its line (sample.keywords)

    @property
    def candidates_per_poem(self) -> int:
        """The bodies drawn per poem: best_of, or 1 when greedy (greedy candidates would all be the same)."""
        return self.best_of if self.temperature > 0 else 1

    def body_grammar(self) -> BodyGrammar:
        """The grammar of one body under these options (the budget never cuts the prompt short)."""
        return BodyGrammar(self.form, self.acrostic, max(self.max_chars, len(self.prompt) + 1))


@dataclass(frozen=True)
class VerseOptions:
    """The rules of verse a fixed-form request asks for, as the user gave them."""

    strict: bool = False  # 格律: a 平仄 template, one rhyme group, no character twice
    template: str | None = None  # with strict: this template (a key or name), else one that fits, per poem
    rhyme: str | None = None  # rhyme in the 平水韵 group of this character, else in any
    no_rhyme: bool = False  # neither rhyme nor the 重字 rule: the plain model in the form's shape


@dataclass(frozen=True)
class SampleRequest:
    """A checked `poetgen sample` request: what sample_request returns and Sampler takes."""

    options: SampleOptions
    verse: VerseOptions


def sample_request(*, prompt: str = "", title: str | None = None, form: str = "free", acrostic: str = "",
                   num: int = SampleOptions.num, temperature: float = SampleOptions.temperature,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   max_chars: int = SampleOptions.max_chars, best_of: int = SampleOptions.best_of,
                   strict: bool = False, template: str | None = None, rhyme: str | None = None,
                   no_rhyme: bool = False, score: str = SampleOptions.score,
                   prune: bool = SampleOptions.prune, author: str | None = None,
                   plan: bool = SampleOptions.plan, keywords: str | list[str] | tuple[str, ...] | None = None,
                   search: str = SampleOptions.search) -> SampleRequest:
    """The one validation of a sampling request, from the user's words and before torch loads: the
    form by name, the text normalized (ASCII marks made full-width, spaces trimmed), a random seed
    when none is given. Raises UsageError naming the first value no sampler can use, a verse option
    without what it needs, or text the form cannot hold. What depends on the model (its vocabulary,
    script and tone table) Sampler checks. A value of the wrong type (from Python) is a TypeError
    naming the word."""
    check_types({k: v for k, v in locals().items() if k in WORD_TYPES})
    check_given(title, acrostic, rhyme, form, max_chars)
    if keywords is not None and not isinstance(keywords, str):
        if not all(isinstance(k, str) for k in keywords):
            raise TypeError(f"keywords must be a string or a list of strings, got {keywords!r}")
        keywords = ",".join(keywords)
    if author is not None and not "".join(author.split()):
        raise UsageError("--author is empty: give a poet's name, e.g. 杜甫 (`poetgen info` says how many it knows)")
    options = SampleOptions(
        prompt=full_width_marks(prompt.strip()),
        title=full_width_marks("".join(title.split())) if title is not None else None,
        form=get_form(form), acrostic=acrostic.strip(), num=num, temperature=temperature, top_k=top_k,
        top_p=top_p, seed=seed if seed is not None else secrets.randbelow(2**31), max_chars=max_chars,
        best_of=best_of, score=score, prune=prune,
        author="".join(author.split()) if author is not None else None, plan=plan,
        keywords=_keywords(keywords) if keywords is not None else (), search=search)
    verse = VerseOptions(strict=strict, template=template, rhyme=rhyme, no_rhyme=no_rhyme)
    check_decoding(options)
    check_verse(options.form, verse)
    check_text(options)
    check_keywords(options, verse)
    return SampleRequest(options, verse)


_NUMBER, _INT = "a number", "an integer"
WORD_TYPES = {  # each word of a request: what it must be (None: may be None)
    "prompt": (str,), "title": (str, None), "form": (str,), "acrostic": (str,), "num": (_INT,),
    "temperature": (_NUMBER,), "top_k": (_INT, None), "top_p": (_NUMBER, None), "seed": (_INT, None),
    "max_chars": (_INT,), "best_of": (_INT,), "strict": (bool,), "template": (str, None), "rhyme": (str, None),
    "no_rhyme": (bool,), "score": (str,), "prune": (bool,), "author": (str, None), "plan": (bool,),
    "keywords": (str, list, tuple, None), "search": (str,),
}


def _is(value, kind) -> bool:
    if kind is None:
        return value is None
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_types(words: dict) -> None:
    """TypeError naming the first word whose value is of the wrong type (a Python caller's mistake)."""
    for name, value in words.items():
        kinds = WORD_TYPES[name]
        if not any(_is(value, kind) for kind in kinds):
            want = " or ".join("None" if k is None else k if isinstance(k, str) else
                               {str: "a string", bool: "True or False"}[k] for k in kinds)
            raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")


def check_given(title: str | None, acrostic: str, rhyme: str | None, form: str, max_chars: int) -> None:
    """Raise UsageError for words given but saying nothing (a blank title, heads or rhyme) and for a
    length given to a form that has its own."""
    if title is not None and not "".join(title.split()):
        raise UsageError("--title is empty: give a title, or leave --title out and the model writes one")
    if acrostic and not acrostic.strip():
        raise UsageError("--acrostic holds only spaces: give the heads of the lines, e.g. 春夏秋冬")
    if rhyme is not None and not rhyme.strip():
        raise UsageError("--rhyme is empty: give a character of the rhyme group, e.g. 东")
    if max_chars != SampleOptions.max_chars and get_form(form) is not None:
        raise UsageError(f"--max-chars sets the length of a free-form poem; {form} has its own: drop --max-chars")


def _keywords(text: str) -> tuple[str, ...]:
    from .keywords import split_keywords

    try:
        return split_keywords(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_keywords(opts: SampleOptions, verse: VerseOptions) -> None:
    """Raise UsageError for keywords the request cannot hold: without the plan they open, beside a
    prompt, more than the lines, too long for a line, a character more often than the rules allow, or
    (free form) more than --max-chars has room for."""
    if not opts.keywords:
        return
    from .keywords import check_keywords as problem
    from .keywords import line_need

    if not opts.plan:
        raise UsageError("--keywords open the plan, which --no-plan turns off: drop one of them")
    if opts.prompt:
        raise UsageError("--keywords and --prompt cannot be combined (the prompt fixes the first line's words): "
                         "put the first keyword in the prompt, or drop --prompt")
    found = problem(opts.keywords, opts.form, opts.acrostic, 1 if verse.strict else 2)
    if found:
        raise UsageError(found)
    if opts.form is None:
        need = sum(line_need(k, i < len(opts.acrostic)) for i, k in enumerate(opts.keywords))
        if need > opts.max_chars:
            raise UsageError(f"--keywords need up to {need} characters of a free-form poem, more than --max-chars "
                             f"{opts.max_chars}: raise --max-chars or give fewer keywords")


def check_decoding(opts: SampleOptions) -> None:
    """Raise UsageError for a decoding setting no sampler can use."""
    t = opts.temperature
    if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 <= t <= MAX_TEMPERATURE):
        raise UsageError(f"--temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {t}")
    if opts.top_p is not None and not (0 < opts.top_p <= 1):
        raise UsageError(f"--top-p must be in (0, 1], got {opts.top_p}")
    if opts.top_k is not None and opts.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {opts.top_k}")
    if not 1 <= opts.num <= MAX_NUM:
        raise UsageError(f"--num must be between 1 and {MAX_NUM:,}, got {opts.num}: run the command again "
                         "for more")
    if opts.score not in SCORES:
        raise UsageError(f"unknown score {opts.score!r}: choose one of {', '.join(SCORES)}")
    if not 1 <= opts.best_of <= 64:
        raise UsageError(f"--best-of must be between 1 and 64, got {opts.best_of}")
    if opts.search not in SEARCHES:
        raise UsageError(f"unknown search {opts.search!r}: choose one of {', '.join(SEARCHES)}")
    if opts.num * opts.best_of > MAX_COMMAND_ROWS:
        raise UsageError(f"--num × --best-of is {opts.num * opts.best_of:,}; at most {MAX_COMMAND_ROWS:,} rows are "
                         "drawn in one command: lower one of them")
    if not 2 <= opts.max_chars <= MAX_CHARS:
        raise UsageError(f"--max-chars must be between 2 and {MAX_CHARS:,}, got {opts.max_chars}")
    if not 0 <= opts.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {opts.seed}")


def check_verse(form: Form | None, verse: VerseOptions) -> None:
    """Raise UsageError for verse options that contradict each other or lack the fixed form they need."""
    if form is None and (verse.strict or verse.rhyme):
        raise UsageError(f"{'--strict' if verse.strict else '--rhyme'} {NEEDS_FORM}")
    if verse.template and not verse.strict:
        raise UsageError("--template needs --strict")
    if verse.rhyme and verse.no_rhyme:
        raise UsageError("--rhyme and --no-rhyme contradict each other: drop one")
    if verse.strict and verse.no_rhyme:
        raise UsageError("--strict rhymes by its rules: drop --no-rhyme (or --strict)")
    if verse.template:
        from ..prosody import get_template

        get_template(form, verse.template)


def check_text(opts: SampleOptions) -> None:
    """Raise UsageError for a title too long, acrostic heads that cannot start the form's lines, or a
    prompt the form (and the heads) cannot hold."""
    if opts.title is not None and len(opts.title) > MAX_TITLE:
        raise UsageError(f"--title has {len(opts.title)} characters; titles have at most {MAX_TITLE}: shorten it")
    if opts.acrostic:
        check_heads(opts.acrostic, opts.form)
        if opts.form is None and opts.max_chars < FREE_LINE * len(opts.acrostic):
            raise UsageError(f"--acrostic has {len(opts.acrostic)} heads: a free-form poem of {len(opts.acrostic)} "
                             f"lines needs --max-chars {FREE_LINE * len(opts.acrostic)} or more (now {opts.max_chars}, "
                             f"room for {opts.max_chars // FREE_LINE} heads; at most {MAX_CHARS:,}, room for "
                             f"{MAX_CHARS // FREE_LINE}): raise --max-chars or give fewer heads")
    if len(opts.prompt) > MAX_PROMPT:
        raise UsageError(f"--prompt has {len(opts.prompt):,} characters; a prompt has at most {MAX_PROMPT:,}: "
                         "shorten it")
    check_prompt(opts.prompt, opts.body_grammar())


def in_model_script(opts: SampleOptions, vocab: Vocab, script: str | None) -> SampleOptions:
    """New options with the text in the model's script; UsageError for characters not in its vocabulary.
    A text the model can already write in standard glyphs is kept verbatim (乾 stays 乾, not the 干 of a
    conversion; a variant form such as 劒 is still normalized to 剑)."""
    from ..glyphs import drawable

    def convert(text: str | None) -> str | None:
        standard = script != "simplified" or all(drawable(c) for c in text or "" if is_han(c))
        return text if text is None or (standard and not vocab.unknown(text)) else to_script(text, script)

    converted = replace(opts, prompt=convert(opts.prompt), acrostic=convert(opts.acrostic), title=convert(opts.title),
                        author=convert(opts.author), keywords=tuple(convert(k) for k in opts.keywords))
    unknown = vocab.unknown(converted.prompt + (converted.title or "") + converted.acrostic
                            + "".join(converted.keywords))
    if unknown:
        raise UsageError(f"not in the model's vocabulary: {' '.join(repr(c) for c in unknown)}: use other "
                         "characters")
    if converted != opts:  # a conversion can change a length, or part a prompt's character from its head
        check_text(converted)
    return converted
