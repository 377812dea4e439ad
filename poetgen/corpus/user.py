"""A user's own poems as a corpus source (`corpus build --from FILE`), recognised by their content:

- JSON lines, one poem an object: "body" required (a string, lines split at newlines, or a list of
  lines), "title" and "author" optional; other keys are ignored;
- plain UTF-8 text: poems separated by blank lines; a first line in 《》 is the poem's title.

Either becomes records of the package's shape ({id, title, author, paragraphs}), so the same cleaning,
conversion, plan and record format apply. A line without an end mark gets one: 。 after a couplet (a
line holding a ，), an even line or the poem's last line, ， after the others; verse written one line
to a row needs no punctuation. Each poem's id is a digest of its text, so its split
does not depend on where it stands in the file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import UsageError
from ..text import LINE_END

VAL_SHARE, TEST_SHARE = 10, 5  # percent of a user's poems in val and test (a small file needs a larger share)
MIN_POEMS = 20  # usable poems a user's file needs: enough for a split with a few in val
MAX_LINE = 20_000  # characters of one line of the file; a longer one is not a poem's
GZIP_MAGIC = b"\x1f\x8b"  # the package tarball starts so; a user's file never does


def is_user_file(source: Path) -> bool:
    """Whether `source` is a user's file of poems rather than the package (its tarball or folder)."""
    if not source.is_file():
        return False
    with open(source, "rb") as f:
        return f.read(2) != GZIP_MAGIC


def split_of(poem_id: str) -> str:
    """A user poem's split, from its id: VAL_SHARE percent val, TEST_SHARE test, the rest train."""
    bucket = int(hashlib.sha1(poem_id.encode("utf-8")).hexdigest(), 16) % 100
    return "val" if bucket < VAL_SHARE else "test" if bucket < VAL_SHARE + TEST_SHARE else "train"


def read_user_file(path: Path) -> tuple[list[dict], dict]:
    """The records of a user's file and its source entry for meta.json (file name, sha256, format).
    UsageError for a file that cannot be one: not UTF-8, empty, a line too long, a JSON line that is
    not a poem object."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder: give a file of poems (JSON lines or plain text)") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start:,} is not): save it as UTF-8") from None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise UsageError(f"{path}: line {n:,} has {len(line):,} characters, more than any poem's "
                             f"({MAX_LINE:,} at most): split the file into lines")
    if not text.strip():
        raise UsageError(f"{path} is empty: give poems as JSON lines or as plain text, a blank line between poems")
    kind = file_format(lines)
    records = _from_jsonl(path, lines) if kind == "jsonl" else _from_text(lines)
    source = {"file": os.path.basename(path), "sha256": hashlib.sha256(data).hexdigest(), "format": kind}
    return records, source


def file_format(lines: list[str]) -> str:
    """"jsonl" when the first line that holds anything opens a JSON value, else "text"."""
    first = next((line.lstrip() for line in lines if line.strip()), "")
    return "jsonl" if first[:1] in ("{", "[") else "text"


def parse_poems(text: str, path) -> list[tuple[str, str]]:
    """(title, body) of each poem in `text`, in either format of a user's file (eval --file)."""
    lines = text.splitlines()
    records = _from_jsonl(path, lines) if file_format(lines) == "jsonl" else _from_text(lines)
    return [(r["title"], "".join(r["paragraphs"])) for r in records]


def _record(title: str, author: str, lines: list[str]) -> dict:
    lines = [x.strip() for x in lines if x.strip()]
    paragraphs = []
    for i, line in enumerate(lines):
        if line[-1] not in LINE_END:  # 。 after a couplet, an even line or the last; ， after the others
            line += "。" if "，" in line or i % 2 == 1 or i == len(lines) - 1 else "，"
        paragraphs.append(line)
    digest = hashlib.sha1(f"{title}\n{''.join(paragraphs)}".encode()).hexdigest()[:16]  # the same in either format
    return {"id": f"user:{digest}", "title": title, "author": author, "paragraphs": paragraphs}


def _from_jsonl(path: Path, lines: list[str]) -> list[dict]:
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: line {n:,} is not JSON ({e.msg}): one poem object a line") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}: line {n:,} is not a JSON object: one poem object a line, e.g. "
                             '{"title": "…", "body": "…"}')
        body = obj.get("body")
        if isinstance(body, str):
            body = body.splitlines()
        if not (isinstance(body, list) and body and all(isinstance(x, str) for x in body)):
            raise UsageError(f"{path}: line {n:,} has no \"body\" (a string, or a list of lines): every poem needs one")
        title, author = obj.get("title"), obj.get("author")
        records.append(_record(title if isinstance(title, str) else "", author if isinstance(author, str) else "",
                               body))
    return records


def _from_text(lines: list[str]) -> list[dict]:
    records, poem, title = [], [], ""
    for line in [*lines, ""]:
        if line.strip():
            poem.append(line.strip())
            continue
        if poem:
            if poem[0].startswith("《") and poem[0].endswith("》"):
                title, poem = poem[0][1:-1], poem[1:]
            if poem:  # a title alone, a blank line after it, titles the poem that follows
                records.append(_record(title, "", poem))
                title = ""
            poem = []
    return records


def check_enough(path: Path, poems: list, dropped) -> None:
    """UsageError when the cleaned poems of a user's file are too few to split (none with Han text, or
    fewer than MIN_POEMS), naming what the cleaning dropped."""
    why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(dropped.items()))
    dropped_note = f" (dropped: {why})" if why else ""
    if not poems:
        raise UsageError(f"{path} holds no usable poem of Han text{dropped_note}: give poems in Chinese characters")
    if len(poems) < MIN_POEMS:
        raise UsageError(f"{path} holds {len(poems)} usable poems{dropped_note}; a corpus needs at least "
                         f"{MIN_POEMS} to split into train and val: add poems")
