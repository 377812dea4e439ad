"""Build the prepared corpus: clean, split at poem boundaries, plan, tokenize, and install every file
all or nothing (meta.json last)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import plan
from ..errors import CorpusError, UsageError
from ..forms import detect_form
from ..glyphs import KINDS, LEFT_AMBIGUOUS, LEFT_OUTSIDE_BMP, Normalizer, in_gb2312
from ..text import converter, is_han
from ..vocab import MIN_COUNT, USER_MIN_COUNT, Vocab
from . import user
from .clean import (
    Poem,
    Progress,
    clean_poems,
)
from .fetch import (
    INTEGRITY,
    PACKAGE,
    VERSION,
    cached_tarball,
    package_root,
    read_package,
    verify_tarball,
)
from .store import (
    CORPUS_FORMAT,
    GLYPHS_FILE,
    SONG,
    SONG_FILES,
    SPLITS,
    corpus_lock,
    count_tones,
    install,
)


@dataclass
class BuildResult:
    data_dir: Path
    meta: dict
    dropped: Counter = field(default_factory=Counter)


def split_of(poem_id: str) -> str:
    """The split of a poem, from its id alone: sha1(id) % 100 → 0–1 val, 2–3 test, else train."""
    bucket = int(hashlib.sha1(poem_id.encode("utf-8")).hexdigest(), 16) % 100
    return "val" if bucket < 2 else "test" if bucket < 4 else "train"


def _order_key(poem: Poem) -> str:
    return hashlib.sha1(poem.id.encode("utf-8")).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(
    data_dir: Path,
    source: Path | None = None,
    script: str = "simplified",
    min_count: int | None = None,
    integrity: str = INTEGRITY,
    progress: Progress | None = None,
    with_song: bool = False,
) -> BuildResult:
    """Build the prepared corpus in `data_dir` from `source`: the package (default: the cached tarball)
    or a user's file of poems (corpus.user). `min_count`: None keeps characters seen twice in train
    (vocab.MIN_COUNT), or once in a user's file, whose vocabulary a fine-tune joins to its model's.

    Writes vocab.json, {train,val,test}.bin (uint16 token streams), poems.{split}.jsonl (cleaned
    records with aligned tones) and meta.json, each atomically; meta.json last. With `with_song`,
    also the 全宋诗 as a split of its own (song.bin, poems.song.jsonl): cleaned and normalized by
    the same rules, in the Tang train split's vocabulary, without any poem whose body a Tang split
    holds; the Tang splits are byte for byte what they are without it."""
    if min_count is not None and min_count < 1:
        raise UsageError(f"--min-count must be at least 1, got {min_count}")
    converter(script)  # an unknown script, or no OpenCC, is said before any work
    data_dir = Path(data_dir)
    read = None
    if source is not None:  # a named source is checked before the corpus folder (and its lock) exists
        source = Path(source)
        if not source.exists():
            raise UsageError(f"--from {source}: no such file or folder: give the package's tarball or folder, "
                             "or a file of your own poems")
        if source.is_dir():
            package_root(source)
        elif user.is_user_file(source):
            read = _read(source, integrity, with_song, script, None)  # a moment: no progress to show
    with corpus_lock(data_dir):
        if read is None:
            source = Path(source) if source is not None else cached_tarball(data_dir)
            if not source.exists():
                raise CorpusError(f"no corpus package at {source}: run `poetgen corpus fetch` first")
            read = _read(source, integrity, with_song, script, progress)
        return _build(data_dir, read, script, min_count, progress)


def _read(source: Path, integrity: str, with_song: bool, script: str, progress: Progress | None) -> tuple:
    """The source read and cleaned: (raw poems, raw Song poems or None, source entry, cleaned poems,
    drops, normalizer); a user's file with too few usable poems is refused here."""
    if progress:
        progress("read", 0, 1)
    raw_poems, raw_strains, raw_song, source_meta = _read_source(source, integrity, with_song)
    if progress:
        progress("read", 1, 1)
    poems, dropped, normalizer = clean_poems(raw_poems, raw_strains, script, progress)
    if "file" in source_meta:
        user.check_enough(source, poems, dropped)
    return raw_poems, raw_song, source_meta, poems, dropped, normalizer


def _build(data_dir: Path, read: tuple, script: str, min_count: int | None, progress: Progress | None
           ) -> BuildResult:
    raw_poems, raw_song, source_meta, poems, dropped, normalizer = read
    mine = "file" in source_meta
    if min_count is None:
        min_count = USER_MIN_COUNT if mine else MIN_COUNT
    splits = _split(poems, user.split_of if mine else split_of)
    counts: Counter = Counter()
    for poem in splits["train"]:
        counts.update(poem.title)
        counts.update(poem.body)
    # simplified: a character with no form inside the BMP (few fonts draw it) is <unk>, not a token
    vocab = Vocab.build(counts, min_count, keep=(lambda c: ord(c) <= 0xFFFF) if script == "simplified" else None,
                        plan=True)
    if len(vocab) > np.iinfo(np.uint16).max:
        raise CorpusError(f"vocabulary of {len(vocab)} tokens does not fit uint16: raise --min-count")

    data_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, bytes] = {"vocab.json": vocab.to_json().encode("utf-8")}
    rule = plan.KeywordRule.fit(p.body for p in splits["train"])
    known_poets = plan.poets(p.author for p in splits["train"])
    streams = {s: _write_split(outputs, s, splits[s], vocab, rule, known_poets if s == "train" else None)
               for s in SPLITS}
    song_meta = None
    if raw_song is not None:
        song_meta = _song(raw_song, script, vocab, {p.body for s in SPLITS for p in splits[s]}, outputs, progress,
                          rule)
    outputs[GLYPHS_FILE] = glyph_table(normalizer).encode("utf-8")
    tones = count_tones((p.body, p.tones) for s in SPLITS for p in splits[s])
    outputs["tones.json"] = (json.dumps(tones, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    meta = _meta(splits, streams, vocab, outputs, counts, dropped, normalizer)
    meta.update(source=source_meta, script=script,
                min_count=min_count, poems_read=sum(len(v) for v in raw_poems.values()), poets=known_poets)
    meta[SONG] = song_meta
    install(data_dir, outputs, (json.dumps(dict(sorted(meta.items(), key=lambda kv: _META_ORDER.index(kv[0]))),
                                            ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    return BuildResult(data_dir, meta, dropped)


_META_ORDER = ("format_version", "source", "script", "min_count", "record_format", "plan", "poets", "poems_read",
               "poems", "tokens", "unknown_tokens", "characters", "forms", "vocab_size", "glyphs", "dropped",
               "top_chars", SONG, "files", "sizes", "corpus_hash")  # meta.json's keys, in the order written


def _read_source(source: Path, integrity: str, with_song: bool) -> tuple[dict, dict, dict | None, dict]:
    """The raw poems, strains and (with_song) 全宋诗 of the package, or a user's file of poems (no
    strains, no Song), and the source's entry in meta.json."""
    if user.is_user_file(source):
        if with_song:
            raise UsageError("--with-song takes the 全宋诗 of the package: drop it for a file of your own")
        records, source_meta = user.read_user_file(source)
        return {"user": records}, {}, None, source_meta
    verified = None
    if source.is_file():
        verify_tarball(source, integrity)
        verified = integrity
    raw_poems, raw_strains = read_package(source)
    raw_song = read_package(source, song=True)[0] if with_song else None  # a missing 全宋诗 fails before any work
    return raw_poems, raw_strains, raw_song, {"package": PACKAGE, "version": VERSION, "integrity": verified}


def _split(poems: list[Poem], split=split_of) -> dict[str, list[Poem]]:
    """The cleaned poems by split (`split` of each id), each split in its stream order."""
    splits: dict[str, list[Poem]] = {s: [] for s in SPLITS}
    for poem in poems:
        splits[split(poem.id)].append(poem)
    for s in SPLITS:
        splits[s].sort(key=_order_key)
    if not splits["train"]:
        raise CorpusError("no poem is left for the train split: the package holds too few usable poems")
    return splits


def _write_split(outputs: dict[str, bytes], name: str, poems: list[Poem], vocab: Vocab, rule: plan.KeywordRule,
                 known_poets: dict | None) -> np.ndarray:
    """Plan each poem, and put the split's token stream ({name}.bin) and poems (poems.{name}.jsonl) into
    `outputs`; returns the stream. `known_poets` as encode_poem takes it."""
    ids: list[int] = []
    for poem in poems:
        poem.plan = rule.plan(poem.body)
        ids.extend(encode_poem(vocab, poem, known_poets))
    stream = np.asarray(ids, dtype=np.uint16)
    outputs[f"{name}.bin"] = stream.tobytes()
    outputs[f"poems.{name}.jsonl"] = "".join(p.to_json() + "\n" for p in poems).encode("utf-8")
    return stream


def _meta(splits: dict[str, list[Poem]], streams: dict[str, np.ndarray], vocab: Vocab, outputs: dict[str, bytes],
          counts: Counter, dropped: Counter, normalizer: Normalizer | None) -> dict:
    """meta.json's figures of the built splits and the hashes of every output."""
    file_hashes = {name: _sha256(data) for name, data in sorted(outputs.items())}
    return {
        "format_version": CORPUS_FORMAT,
        "record_format": "<bos> title [<author> poet] [<kw> keyword]… <sep> body <eos>, one token per character; "
                         "val and test records without poet and plan",
        "plan": {"rule": "poetgen.plan.KeywordRule", "plan_share": plan.PLAN_SHARE, "poet_share": plan.POET_SHARE,
                 "min_poet_poems": plan.MIN_POET_POEMS, "max_plan_lines": plan.MAX_PLAN_LINES},
        "poems": {s: len(splits[s]) for s in SPLITS},
        "tokens": {s: int(streams[s].size) for s in SPLITS},
        "unknown_tokens": {s: int((streams[s] == vocab.unk_id).sum()) for s in SPLITS},
        "characters": {s: sum(len(p.body) for p in splits[s]) for s in SPLITS},
        "forms": {s: dict(sorted(Counter(detect_form(p.body) for p in splits[s]).items())) for s in SPLITS},
        "vocab_size": len(vocab),
        "glyphs": glyph_counts(normalizer, vocab),
        "dropped": dict(sorted(dropped.items())),
        "top_chars": [[c, n] for c, n in counts.most_common(50)],
        "files": file_hashes,
        "sizes": {name: len(data) for name, data in sorted(outputs.items())},
        "corpus_hash": _sha256("".join(file_hashes.values()).encode()),
    }


def encode_poem(vocab: Vocab, poem: Poem, known_poets: dict | None) -> list[int]:
    """The tokens of a poem's record: a train record (`known_poets` given) carries its poet (if known) and
    its plan, each in its share of the records (plan.carries); the others carry neither."""
    if known_poets is None:
        return vocab.encode_record(poem.title, poem.body)
    author = poem.author if poem.author in known_poets and plan.carries(poem.id, "poet", plan.POET_SHARE) else ""
    keywords = None
    if len(poem.plan) <= plan.MAX_PLAN_LINES and plan.carries(poem.id, "plan", plan.PLAN_SHARE):
        keywords = poem.plan
    return vocab.encode_record(poem.title, poem.body, author, keywords)


def _song(raw: dict[str, list], script: str, vocab: Vocab, tang_bodies: set[str], outputs: dict[str, bytes],
          progress: Progress | None, rule: plan.KeywordRule) -> dict:
    """Clean the 全宋诗's files into outputs (song.bin, poems.song.jsonl); its meta.json entry."""
    def song_progress(stage: str, done: int, total: int) -> None:
        if progress:
            progress(f"{stage} 全宋诗", done, total)

    poems, dropped, normalizer = clean_poems(raw, {}, script, song_progress)
    kept = []
    for poem in poems:
        if poem.body in tang_bodies:  # never train on a Tang val/test poem under another name
            dropped["in_tang"] += 1
        else:
            kept.append(poem)
    kept.sort(key=_order_key)
    arr = _write_split(outputs, SONG, kept, vocab, rule, {})  # a training split: plans, no poets
    outputs[SONG_FILES[2]] = glyph_table(normalizer).encode("utf-8")
    return {
        "poems_read": sum(len(v) for v in raw.values()),
        "poems": len(kept),
        "tokens": int(arr.size),
        "unknown_tokens": int((arr == vocab.unk_id).sum()),
        "characters": sum(len(p.body) for p in kept),
        "forms": dict(sorted(Counter(detect_form(p.body) for p in kept).items())),
        "dropped": dict(sorted(dropped.items())),
        "glyphs": glyph_counts(normalizer, vocab),
    }


def glyph_table(normalizer: Normalizer | None) -> str:
    """The audit file: one line per (from, to, kind) with its occurrences, most frequent first."""
    lines = ["from\tto\tkind\toccurrences\n"]
    if normalizer is not None:
        for (a, b, kind), n in sorted(normalizer.pairs.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{a}\t{b}\t{kind}\t{n}\n")
    return "".join(lines)


def glyph_counts(normalizer: Normalizer | None, vocab: Vocab) -> dict:
    """meta.json's account of glyph normalization: characters changed by kind (and distinct pairs),
    characters left as they were and why, and what the vocabulary still holds outside BMP/GB 2312."""
    chars = [t for t in vocab.tokens if len(t) == 1]
    out = {
        "tables": "OpenCC t2s, then yitizi variant groups to GB 2312 (poetgen/glyphs.py)" if normalizer else None,
        "changed": {k: 0 for k in KINDS},
        "changed_pairs": {k: 0 for k in KINDS},
        "left": {k: 0 for k in (LEFT_AMBIGUOUS, LEFT_OUTSIDE_BMP)},
        "vocab_outside_bmp": sum(1 for c in chars if ord(c) > 0xFFFF),
        "outside_bmp_as_unknown": sum(n for (_, _, kind), n in normalizer.pairs.items() if kind == LEFT_OUTSIDE_BMP)
        if normalizer else 0,
        "vocab_outside_gb2312": sum(1 for c in chars if is_han(c) and not in_gb2312(c)),
    }
    if normalizer is not None:
        for (_, _, kind), n in normalizer.pairs.items():
            group, pairs_group = ("changed", "changed_pairs") if kind in KINDS else ("left", None)
            out[group][kind] += n
            if pairs_group:
                out[pairs_group][kind] += 1
    return out
