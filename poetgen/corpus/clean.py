"""Clean the package's poems: brackets and notes out, punctuation normalized, tones aligned, script
converted, glyphs normalized, duplicates dropped."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..glyphs import Normalizer
from ..text import ASCII_MARKS, LINE_END, PLACEHOLDERS, converter, is_han
from ..vocab import MAX_TITLE

MIN_HAN = 10


Progress = Callable[[str, int, int], None]


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
