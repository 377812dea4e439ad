"""Repeated characters per form, real poems against sampled ones, and the human rate of second uses.

For each fixed form (五绝 七绝 五律 七律) and each source of poems: the mean number of distinct
characters used twice or more in one poem (the second of a 叠字 pair, 萧萧, is not a use), the share
of poems with any such repeat, the 叠字 rate (poems with an adjacent doubled character) and the share
with a character used 3+ times. A source is a corpus split (its regulated poems, form by
poetgen.forms.detect) or a JSONL file of `poetgen sample --format jsonl` records (form from the
record, body from its "text").

Then, from the train split's regulated poems, per character: how often poets use it again once it is
in a poem, against the chance of that at its frequency (poetgen.repetition.second_use_stats); the top
reused characters are printed and `--save-stats` writes them all as JSON (data derived from the corpus
at run time: keep it under runs/, never commit it).

    python benchmarks/repetition.py                                  # the test split
    python benchmarks/repetition.py --generated default=runs/judge/default-qijue-n200-s1.jsonl \\
        --generated plain=runs/judge/plain-qijue-n200-s1.jsonl --json    # files of one name are pooled
    python benchmarks/repetition.py --save-stats runs/rep/second-use.json --top 30

Tables and JSON go to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import unicodedata
from dataclasses import asdict
from pathlib import Path

from poetgen import corpus
from poetgen.forms import FORMS, detect
from poetgen.paths import resolve_data_dir
from poetgen.repetition import RepetitionSummary, SecondUse, second_use_stats, summarize


def split_bodies(data_dir: Path, split: str) -> dict[str, list[str]]:
    """Bodies of one split's regulated poems, by form key."""
    out: dict[str, list[str]] = {key: [] for key in FORMS}
    for poem in corpus.iter_poems(data_dir, split):
        form = detect(poem.body)
        if form:
            out[form.key].append(poem.body)
    return out


def jsonl_bodies(path: Path) -> dict[str, list[str]]:
    """Bodies of sampled poems in a `poetgen sample --format jsonl` file, by form key."""
    out: dict[str, list[str]] = {key: [] for key in FORMS}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            body = record["text"]
            key = record.get("form")
            if key not in FORMS:
                form = detect(body)
                key = form.key if form else None
            if key:
                out[key].append(body)
    return out


def parse_named(spec: str) -> tuple[str, Path]:
    """NAME=path (or a bare path, named by its stem)."""
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep else (Path(spec).stem, Path(spec))


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file beside it, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def width(text: str) -> int:
    """Columns a string takes in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cell(text, columns: int, left: bool = False) -> str:
    """`text` padded to `columns` terminal columns."""
    text = str(text)
    pad = " " * max(columns - width(text), 0)
    return text + pad if left else pad + text


def table(rows: list[tuple[str, str, RepetitionSummary]]) -> str:
    head = " ".join([cell("form", 5, True), cell("source", 16, True), cell("poems", 6), cell("repeated/poem", 13),
                     cell("any", 6), cell("叠字", 6), cell("3+", 6)])
    lines = [head, "-" * width(head)]
    for form, source, s in rows:
        lines.append(" ".join([cell(form, 5, True), cell(source, 16, True), cell(s.poems, 6),
                               cell(f"{s.mean_repeated:.2f}", 13), cell(f"{s.any_repeat:.0%}", 6),
                               cell(f"{s.reduplication:.0%}", 6), cell(f"{s.thrice:.0%}", 6)]))
    return "\n".join(lines)


def stats_table(top: list[tuple[str, SecondUse]]) -> str:
    head = " ".join([cell("char", 4, True), cell("poems", 6), cell("reused", 6), cell("P(again)", 8),
                     cell("by chance", 9), cell("lift", 5), cell("same line", 9)])
    lines = [head]
    for ch, s in top:
        lines.append(" ".join([cell(ch, 4, True), cell(s.poems, 6), cell(s.reused, 6), cell(f"{s.p_again:.3f}", 8),
                               cell(f"{s.expected:.3f}", 9), cell(f"{s.lift:.2f}", 5), cell(f"{s.same_line:.0%}", 9)]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="prepared corpus (default: poetgen's data folder)")
    ap.add_argument("--split", action="append", choices=("train", "val", "test"),
                    help="a corpus split to measure (repeatable; default: test)")
    ap.add_argument("--generated", action="append", default=[], metavar="NAME=FILE.jsonl",
                    help="sampled poems, `poetgen sample --format jsonl` records (repeatable)")
    ap.add_argument("--limit", type=int, help="at most this many poems per form and source")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--top", type=int, default=20, help="reused characters to print")
    ap.add_argument("--min-poems", type=int, default=100,
                    help="second-use statistics only for characters in at least this many train poems")
    ap.add_argument("--lift-min-poems", type=int, default=500,
                    help="the most sought and avoided second uses among characters in this many train poems")
    ap.add_argument("--save-stats", type=Path, metavar="FILE.json", help="write the second-use statistics here")
    args = ap.parse_args()

    data_dir = resolve_data_dir(args.data_dir)
    sources: dict[str, dict[str, list[str]]] = {}
    for split in args.split or ["test"]:
        sources[split] = split_bodies(data_dir, split)
    for spec in args.generated:  # files of one name are pooled
        name, path = parse_named(spec)
        for key, bodies in jsonl_bodies(path).items():
            sources.setdefault(name, {}).setdefault(key, []).extend(bodies)

    rows = []
    for key, form in FORMS.items():
        for name, bodies in sources.items():
            chosen = bodies.get(key, [])[: args.limit] if args.limit else bodies.get(key, [])
            if chosen:
                rows.append((form.name, name, summarize(chosen)))

    train = split_bodies(data_dir, "train")
    train_bodies = [b for key in FORMS for b in train[key]]
    stats = second_use_stats(train_bodies, min_poems=args.min_poems)
    top = list(stats.items())[: args.top]

    if args.json:
        print(json.dumps({"repetition": [{"form": f, "source": n, **s.to_dict()} for f, n, s in rows],
                          "second_use_top": [{"char": c, **asdict(s)} for c, s in top]}, ensure_ascii=False))
    else:
        print(table(rows))
        print(f"\nSecond uses in the train split's regulated poems ({len(train_bodies)} poems; characters in "
              f"{args.min_poems}+ poems: {len(stats)}), most reused first:")
        print(stats_table(top))
        common = sorted((c for c, s in stats.items() if s.poems >= args.lift_min_poems), key=lambda c: stats[c].lift)
        print(f"\nLift in characters of {args.lift_min_poems}+ poems (median "
              f"{stats[common[len(common) // 2]].lift if common else 0:.2f}):")
        print("sought: " + " ".join(f"{c} {stats[c].lift:.2f}" for c in common[::-1][: args.top]))
        print("avoided: " + " ".join(f"{c} {stats[c].lift:.2f}" for c in common[: args.top]))
    if args.save_stats:
        write_json(args.save_stats, {
            "source": "train split, regulated poems (五绝 七绝 五律 七律)",
            "poems": len(train_bodies),
            "min_poems": args.min_poems,
            "fields": "poems, reused, p_again = P(used again | in the poem), expected = the same by chance at "
                      "the character's frequency, lift = p_again / expected, same_line = share of repeat uses "
                      "in a line already holding it",
            "chars": {c: asdict(s) for c, s in stats.items()},
        })
        print(f"second-use statistics of {len(stats)} characters written to {args.save_stats}", file=sys.stderr)


if __name__ == "__main__":
    main()
