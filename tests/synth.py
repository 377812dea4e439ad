"""Synthetic corpora in the shape of chinese-poetry's JSON files: random characters, no real poems."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

# A small alphabet of common CJK code points, used as random symbols.
ALPHABET = [chr(0x4E00 + k * 7) for k in range(60)]
PUNCT_BY_LINE = "，。"


def random_line(rng: random.Random, chars: int, alphabet=ALPHABET) -> str:
    """Characters from a Markov chain: mostly the successor of the previous one (learnable), sometimes
    random, so a language model can do much better than the unigram distribution."""
    out = [rng.choice(alphabet)]
    while len(out) < chars:
        prev = alphabet.index(out[-1])
        out.append(alphabet[(prev * 7 + 3) % len(alphabet)] if rng.random() < 0.8 else rng.choice(alphabet))
    return "".join(out)


def random_poem(rng: random.Random, idx: int, chars: int | None = None, lines: int | None = None) -> dict:
    """A poem record with a random regular body: `lines` lines of `chars` characters."""
    chars = chars or rng.choice((5, 7))
    lines = lines or rng.choice((4, 8))
    body = [random_line(rng, chars) for _ in range(lines)]
    paragraphs = [f"{body[i]}，{body[i + 1]}。" for i in range(0, lines, 2)]
    return {
        "author": "某" + random_line(rng, 1),
        "paragraphs": paragraphs,
        "title": random_line(rng, rng.randint(2, 6)),
        "id": f"synthetic-{idx:05d}-{rng.getrandbits(32):08x}",
    }


def strains_for(poem: dict) -> dict:
    """A strains record aligned with the poem: 平/仄 under characters (a function of the poem id),
    marks kept."""
    rng = random.Random(poem["id"])
    return {
        "id": poem["id"],
        "strains": ["".join(c if c in "，。？！" else rng.choice("平仄") for c in p) for p in poem["paragraphs"]],
    }


def write_package(root: Path, files: dict[str, list[dict]], strains: dict[str, list[dict]] | None = None,
                  wrap: bool = True) -> Path:
    """Write poem files (and strains files) under root/package/dist like the npm package; return root."""
    base = root / "package" if wrap else root
    (base / "dist" / "quantangshi").mkdir(parents=True, exist_ok=True)
    (base / "dist" / "strains" / "json").mkdir(parents=True, exist_ok=True)
    (base / "package.json").write_text('{"name": "chinese-poetry", "version": "2.0.1"}')
    for name, records in files.items():
        (base / "dist" / "quantangshi" / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    if strains is None:
        strains = {name: [strains_for(p) for p in recs if "paragraphs" in p] for name, recs in files.items()}
    for name, records in strains.items():
        (base / "dist" / "strains" / "json" / name).write_text(json.dumps(records, ensure_ascii=False),
                                                               encoding="utf-8")
    return root


def make_corpus(root: Path, poems: int = 300, seed: int = 0, per_file: int = 100, extra: list[dict] | None = None
                ) -> Path:
    """A package folder of `poems` random regular poems (plus `extra` records) in files of `per_file`."""
    rng = random.Random(seed)
    records = [random_poem(rng, i) for i in range(poems)] + list(extra or [])
    files = {f"poet.tang.{i * 1000}.json": records[i * per_file:(i + 1) * per_file]
             for i in range((len(records) + per_file - 1) // per_file)}
    return write_package(root, files)


def make_tarball(folder: Path, path: Path) -> Path:
    """gzip tarball of an npm-style package folder (entries under package/)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder / "package", arcname="package")
    return path
