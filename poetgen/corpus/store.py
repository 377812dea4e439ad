"""The prepared corpus on disk: its files installed all or nothing, meta.json checked, the splits' poems
and token streams loaded, and the tables taken from them (叠字, tones)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import CorpusError, UsageError
from ..paths import exclusive_lock
from ..text import is_han
from .clean import PING, ZE, Poem

SONG = "song"  # its split: training data only, never validation or test
SONG_FILES = (f"{SONG}.bin", f"poems.{SONG}.jsonl", f"{SONG}.glyphs.tsv")
SPLITS = ("train", "val", "test")
CORPUS_FORMAT = 2  # of the prepared corpus (meta.json); checkpoints have their own
GLYPHS_FILE = "glyphs.tsv"  # every glyph normalization made, for a reader to audit


def corpus_lock(data_dir: Path):
    """One fetch or build at a time per data folder."""
    return exclusive_lock(data_dir, CorpusError(f"another poetgen is fetching or building the corpus in "
                                                f"{data_dir}: wait for it"))


def install(data_dir: Path, outputs: dict[str, bytes], meta: bytes) -> None:
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
    absent = next((key for key, kind in META_KEYS.items() if not isinstance(meta.get(key), kind)), None)
    if absent is not None:
        raise CorpusError(f"{path} is damaged (no {absent}): run `poetgen corpus build`")
    for name, digest in meta["files"].items():
        if _digest(data_dir / name) != digest:
            raise CorpusError(f"the corpus in {data_dir} is damaged, incomplete or mixed ({name} is not the file "
                              "meta.json lists): run `poetgen corpus build`")
    return meta


META_KEYS = {"script": str, "poems": dict, "tokens": dict, "vocab_size": int, "files": dict, "sizes": dict,
             "source": dict}  # what the commands read of meta.json
_DIGESTS: dict[tuple, str | None] = {}  # (path, size, mtime) → sha256: each file is read once per process


def _digest(path: Path) -> str | None:
    """The sha256 of a file's contents (None when it cannot be read), computed once per version of it."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return None
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


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


def count_tones(pairs: Iterable[tuple[str, str]]) -> dict[str, list[int]]:
    """{char: [平 count, 仄 count]} from the (body, tones) pairs of cleaned poems."""
    counts: dict[str, list[int]] = {}
    for body, tones in pairs:
        for ch, t in zip(body, tones, strict=False):
            if t == PING or t == ZE:
                c = counts.setdefault(ch, [0, 0])
                c[0 if t == PING else 1] += 1
    return dict(sorted(counts.items()))


def corpus_doubles(data_dir: Path) -> dict | None:
    """The 叠字 of the prepared corpus's train split (count_doubles), stored in a shipped model so that
    sampling writes only the pairs poets write (None if the corpus is absent)."""
    if not (data_dir / "poems.train.jsonl").is_file() or _is_user_corpus(data_dir):
        return None  # a user's few poems would forbid most pairs: the model keeps the table it has
    return count_doubles(p.body for p in iter_poems(data_dir, "train"))


def _is_user_corpus(data_dir: Path) -> bool:
    """Whether the corpus was built from a user's file (corpus.user), by its meta.json."""
    try:
        source = json.loads((data_dir / "meta.json").read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(source, dict) and "file" in source


def corpus_tones(data_dir: Path) -> dict | None:
    """The prepared corpus's tone counts, stored in every checkpoint of a run (None if absent, or if no
    character in it usually reads 平, or none 仄)."""
    from ..prosody import load_tone_counts

    path = data_dir / "tones.json"
    tones = load_tone_counts(path) if path.is_file() else None
    if not tones or not all(any(c[k] > c[1 - k] for c in tones.values()) for k in (0, 1)):
        return None  # no table to speak of (a user's file has no strains): the model keeps the one it has
    return tones


def load_split(data_dir: Path, split: str, meta: dict | None = None) -> np.ndarray:
    """The uint16 token stream of one split of a prepared corpus (checked against its manifest, `meta`:
    the corpus's meta.json as load_meta returned it, read here when not given)."""
    if split not in (*SPLITS, SONG):
        raise UsageError(f"unknown split {split!r}: choose one of {', '.join((*SPLITS, SONG))}")
    if meta is None:
        meta = load_meta(data_dir)
    if split == SONG and not meta.get(SONG):
        raise UsageError(f"the corpus in {data_dir} has no Song poems: run `poetgen corpus prepare --with-song`")
    path = data_dir / f"{split}.bin"
    try:
        return np.fromfile(path, dtype=np.uint16)
    except FileNotFoundError:
        raise CorpusError(f"{path} is missing: run `poetgen corpus build`") from None


def load_train(data_dir: Path, which: str = "train", meta: dict | None = None) -> np.ndarray:
    """The training stream: a split, or "song+train", the Song split followed by the Tang train split
    (batchify cuts it into rows, so every batch mixes both). `meta` as for load_split."""
    if meta is None:
        meta = load_meta(data_dir)
    return np.concatenate([load_split(data_dir, split, meta) for split in which.split("+")])
