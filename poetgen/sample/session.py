"""A sampling session: a Sampler made once from a loaded model and a request, used alike by `poetgen
sample` and the Python API; the Generator beneath it picks the best of each poem's candidates."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

from ..errors import UsageError
from ..text import to_script
from .decode import Decoder
from .masks import VerseRules
from .rank import CUTS, GeneratedPoem, pick, pruned
from .request import SampleOptions, SampleRequest, VerseOptions, check_keywords, in_model_script

MAX_ROWS = 800  # candidate rows decoded at once (memory: a few (rows, vocabulary) tensors)


def _batch_progress(on_progress: Callable[[float], None], first: int, poems: int, share: float) -> None:
    """on_progress of iter_generate, from the share of a batch of `poems` poems (from poem `first`) written."""
    on_progress(first + share * poems)


class Generator(Decoder):
    """Samples poems from a model under SampleOptions: titles first (one per poem), then the bodies,
    `best_of` candidates per poem in one batch, the best kept by `score`."""

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
        poem are drawn in one batch under the form's grammar and the rules of verse, searched line by
        line (opts.search "line") or pruned as they go (CUTS, "poem" unless opts.prune is off), and the
        best by `score` is kept. `on_title(poem, title)` sees
        each generated title, `on_char(row, ch)` each body character as it comes (rows are candidates:
        stream only with one per poem). `on_progress(poems)` hears after each character how many poems'
        worth are written (a float, up to opts.num; in free form measured against opts.max_chars, so it
        may jump at a batch's end). The same options and seed give the same poems. The
        options are trusted: request.sample_request checks them."""
        best_of = opts.candidates_per_poem
        per_batch = max(1, MAX_ROWS // best_of)
        cuts = CUTS if pruned(opts, best_of) else ()
        for start in range(0, opts.num, per_batch):
            part = replace(opts, num=min(per_batch, opts.num - start))
            on_step = None if on_progress is None else partial(_batch_progress, on_progress, start, part.num)
            candidates = self.candidates(part, best_of, on_char, on_title, verse, first=start, cuts=cuts,
                                         on_step=on_step)
            chosen = pick(candidates, part.num, best_of, self.reranker, opts.form.key if opts.form else None)
            for p, poem in enumerate(chosen):
                poem.seed, poem.index = opts.seed, start + p
            yield chosen


class Sampler:
    """A checked request (request.sample_request) made ready for one loaded checkpoint: the options in
    the model's script, the rules of verse, the critic. Raises UsageError for what this model cannot do:
    characters outside its vocabulary, --strict without a tone table, a --rhyme group it has no character
    of, given characters no template allows. `int8`: sample through steppers.Int8Stepper where the model
    allows it (an LSTM on the CPU). Best-of-N in a fixed form ranks with the checkpoint's critic unless
    the options say score="logprob"."""

    def __init__(self, ckpt, request: SampleRequest, int8: bool = True):
        self.request = request
        self.checkpoint = ckpt
        self.options = in_model_script(request.options, ckpt.vocab, ckpt.meta.script)
        check_author(self.options.author, ckpt)
        if self.options.keywords:
            if not ckpt.vocab.plans:
                raise UsageError(f"{ckpt.path} writes no plans (its training records carry none): drop --keywords, "
                                 "or use a model that plans")
            check_keywords(self.options, request.verse)  # again in the model's script
        self.rules = rules_for(ckpt, self.options, request.verse)
        reranker = ckpt.reranker() if self.options.score == "critic" and self.options.form is not None else None
        self.generator = Generator(ckpt.model, ckpt.vocab, ckpt.meta.script, int8=int8, reranker=reranker)

    def poems(self, on_char: Callable[[int, str], None] | None = None,
              on_title: Callable[[int, str], None] | None = None) -> list[GeneratedPoem]:
        """All the request's poems (Generator.generate)."""
        return self.generator.generate(self.options, on_char=on_char, on_title=on_title, verse=self.rules)

    def stream(self, on_progress: Callable[[float], None] | None = None) -> Iterator[list[GeneratedPoem]]:
        """The request's poems in batches as they are written (Generator.iter_generate)."""
        return self.generator.iter_generate(self.options, verse=self.rules, on_progress=on_progress)

    def search(self, poem: GeneratedPoem) -> str:
        """How this poem's candidates were searched: "line" (a fixed form's line search) or "poem"."""
        return "line" if self.options.search == "line" and self.options.form is not None and poem.candidates > 1 \
            else "poem"

    def pruned(self, poem: GeneratedPoem) -> bool:
        """Whether this poem's candidates were pruned as they went."""
        return pruned(self.options, poem.candidates)


def check_author(author: str | None, ckpt) -> None:
    """UsageError unless the model knows `author` (its records named them), naming the nearest it knows."""
    if author is None:
        return
    poets = ckpt.meta.poets or {}
    if not ckpt.vocab.plans or not poets:
        raise UsageError(f"{ckpt.path} knows no poets (its training records named none): drop --author, or use "
                         "a model trained on records with poets' names")
    if author not in poets:
        near = difflib.get_close_matches(author, list(poets), n=3, cutoff=0.0)
        raise UsageError(f"the model knows no poet {author}: it knows {len(poets)}, the nearest {'、'.join(near)}; "
                         "`poetgen info` says how many")


def rules_for(ckpt, opts: SampleOptions, verse: VerseOptions) -> VerseRules | None:
    """The rules of verse the request asks for, from the checkpoint's tone table and the rhyme table of
    its script: None in free form or under --no-rhyme."""
    if opts.form is None or (verse.no_rhyme and not verse.strict):
        return None
    from .. import prosody
    from ..errors import UsageError
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
