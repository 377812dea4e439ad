"""Character vocabulary: build from counts, encode, write and load as readable JSON.

A record is one poem: ``<bos> title <sep> body <eos>``, one token per character. The body keeps
its full-width punctuation, which marks the line ends. A record may also carry, between title and
<sep>, the poet's name after ``<author>`` and the plan, each line's keyword after a ``<kw>``
(poetgen.plan): ``<bos> title <author> name <kw> k1 <kw> k2 … <sep> body <eos>``."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable

from .errors import CorpusError

UNK, BOS, SEP, EOS = "<unk>", "<bos>", "<sep>", "<eos>"
SPECIALS = (UNK, BOS, SEP, EOS)
AUTHOR, KW = "<author>", "<kw>"
PLAN_MARKS = (AUTHOR, KW)  # tokens of a vocabulary whose records carry poets and plans (a corpus puts them last)
MARKERS = SPECIALS + PLAN_MARKS  # every token that is not text
MIN_COUNT = 2  # a prepared corpus keeps the characters its train split holds this often; the rest are <unk>
USER_MIN_COUNT = 1  # --min-count of a corpus from a user's file: a fine-tune joins its vocabulary to the
# model's (train.plan.joined), so a character seen once is better a token than <unk>
MAX_TITLE = 30  # characters of a title: longer ones are cut at corpus build, refused from --title


class Vocab:
    """A bijection between tokens (single characters, plus the special tokens) and ids."""

    def __init__(self, tokens: list[str]):
        if list(tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise CorpusError(f"vocabulary must start with {', '.join(SPECIALS)}: rebuild it")
        if len(set(tokens)) != len(tokens):
            raise CorpusError("vocabulary has repeated tokens: rebuild it")
        odd = next((t for t in tokens if not isinstance(t, str) or (len(t) != 1 and t not in MARKERS)), None)
        if odd is not None:
            raise CorpusError(f"vocabulary holds {odd!r}, which is not one character: rebuild it")
        self.tokens = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        self.unk_id, self.bos_id, self.sep_id, self.eos_id = (self.stoi[s] for s in SPECIALS)
        self.author_id, self.kw_id = (self.stoi.get(s) for s in PLAN_MARKS)  # None: a vocabulary without plans

    @property
    def plans(self) -> bool:
        """Whether records of this vocabulary may carry a poet and a plan."""
        return self.kw_id is not None and self.author_id is not None

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1, keep: Callable[[str], bool] | None = None,
              plan: bool = False) -> Vocab:
        """Specials first, then every character seen at least `min_count` times (and that `keep`
        accepts), most frequent first (ties by code point, so the order is deterministic); with
        `plan`, the plan's markers last."""
        chars = [c for c, n in counts.items() if n >= min_count and c not in MARKERS and (keep is None or keep(c))]
        chars.sort(key=lambda c: (-counts[c], c))
        return cls([*SPECIALS, *chars, *(PLAN_MARKS if plan else ())])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, char: str) -> bool:
        return char in self.stoi

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; characters outside the vocabulary become <unk>."""
        return [self.stoi.get(c, self.unk_id) for c in text]

    def encode_record(self, title: str, body: str, author: str = "", plan: list[str] | None = None) -> list[int]:
        """Ids of one poem record: <bos> title [<author> author] [<kw> keyword …] <sep> body <eos>."""
        ids = [self.bos_id, *self.encode(title)]
        if author or plan:
            if not self.plans:
                raise CorpusError("this vocabulary has no plan markers: rebuild the corpus")
            if author:
                ids += [self.author_id, *self.encode(author)]
            for keyword in plan or ():
                ids += [self.kw_id, *self.encode(keyword)]
        return [*ids, self.sep_id, *self.encode(body), self.eos_id]

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def to_json(self) -> str:
        """The tokens as readable JSON (what vocab.json holds; corpus.build writes it with the rest)."""
        return json.dumps(self.tokens, ensure_ascii=False, indent=0) + "\n"

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        try:
            with open(path, encoding="utf-8") as f:
                tokens = json.load(f)
        except FileNotFoundError:
            raise CorpusError(f"no vocabulary at {path}: run `poetgen corpus prepare`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(f"vocabulary {path} is not valid JSON ({e}): run `poetgen corpus build`") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise CorpusError(f"vocabulary {path} is not a list of tokens: run `poetgen corpus build`")
        return cls(tokens)
