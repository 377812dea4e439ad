"""The reader panel: blind sheets of poems from several settings and real poems, and their scores.

    python benchmarks/panel.py make --form qijue --per-source 24 --seed 1 -o benchmarks/panels/NAME \\
        --source default= --source t06="--temperature 0.6" [-c MODEL] [--split val]
    python benchmarks/panel.py score benchmarks/panels/NAME          # reads NAME/answers.txt

`make` draws `--per-source` poems of one form from each source (a source is a label and the
arguments of `poetgen sample` it adds), takes as many real poems of that form from the corpus's
`--split` (val while developing, test once, at the end), shuffles them into one numbered sheet, and
writes into the folder:
- sheet.txt: what the judge reads, the poems' lines only (no titles), numbered. It holds real poets'
  text, so it is never committed (.gitignore): `make` writes it again from the key and the corpus.
- sheet.public.txt: the same sheet with each real poem shown by its corpus id.
- key.json: for every number, its source, and the poem (generated) or the corpus id (real).

The judge is a fresh reader given ../shared/reader-panel.md's brief and sheet.txt, nothing else; the
reply goes into answers.txt as it came. `score` parses its lines `N: G C H|M` and prints, per source,
the mean grammar and coherence and how many poems were judged machine-made."""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

from poetgen import corpus
from poetgen.forms import FORMS, detect_form, split_lines
from poetgen.paths import resolve_data_dir

ANSWER = re.compile(r"^\s*(\d+)\s*[:：]\s*([1-5])\s+([1-5])\s+([HMhm])\b")


def generated(form: str, args: str, num: int, seed: int, checkpoint: str | None) -> list[dict]:
    """`num` poems of `poetgen sample --form FORM ARGS`, as its JSON records."""
    cmd = [sys.executable, "-m", "poetgen", "sample", "--form", form, "--num", str(num), "--seed", str(seed),
           "--format", "jsonl", *shlex.split(args)]
    if checkpoint:
        cmd += ["-c", checkpoint]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"poetgen sample {args!r} failed: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines()]


def real_poems(data_dir: Path, split: str, form: str) -> dict[str, str]:
    """{id: body} of the split's poems in `form` (a key: qijue)."""
    name = FORMS[form].name
    return {p.id: p.body for p in corpus.iter_poems(data_dir, split) if detect_form(p.body) == name}


def make(a: argparse.Namespace) -> None:
    form = FORMS[a.form].key
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = resolve_data_dir(Path(a.data_dir) if a.data_dir else None)
    entries = []
    for n, source in enumerate(a.source):
        label, _, args = source.partition("=")
        for r in generated(form, args, a.per_source, a.seed + 1000 * n, a.checkpoint):
            entries.append({"source": label, "args": args, "seed": r["seed"], "index": r["index"],
                            "title": r["title"], "poem": r["text"]})
        print(f"{label}: {a.per_source} poems", file=sys.stderr)
    pool = real_poems(data_dir, a.split, form)
    rng = random.Random(a.seed)
    for poem_id in rng.sample(sorted(pool), a.per_source):
        entries.append({"source": "real", "split": a.split, "id": poem_id})
    rng.shuffle(entries)
    key = {"form": form, "split": a.split, "seed": a.seed, "checkpoint": a.checkpoint or "shipped",
           "poems": {str(i + 1): e for i, e in enumerate(entries)}}
    (out / "key.json").write_text(json.dumps(key, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_sheets(out, key, pool)
    print(f"wrote {out}/sheet.txt ({len(entries)} poems), sheet.public.txt and key.json", file=sys.stderr)


def write_sheets(out: Path, key: dict, real: dict[str, str]) -> None:
    """sheet.txt (real poems in full) and sheet.public.txt (real poems by id) from the key."""
    full, public = [], []
    for number, e in key["poems"].items():
        body = e["poem"] if e["source"] != "real" else real[e["id"]]
        lines = "\n".join(split_lines(body))
        full.append(f"{number}.\n{lines}\n")
        public.append(f"{number}.\n{lines if e['source'] != 'real' else '[' + e['split'] + ' poem ' + e['id'] + ']'}\n")
    (out / "sheet.txt").write_text("\n".join(full), encoding="utf-8")
    (out / "sheet.public.txt").write_text("\n".join(public), encoding="utf-8")


def score(a: argparse.Namespace) -> None:
    folder = Path(a.folder)
    key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    answers = {}
    for line in (folder / (a.answers or "answers.txt")).read_text(encoding="utf-8").splitlines():
        m = ANSWER.match(line)
        if m:
            answers[m.group(1)] = (int(m.group(2)), int(m.group(3)), m.group(4).upper())
    missing = [n for n in key["poems"] if n not in answers]
    if missing:
        print(f"warning: no answer for {len(missing)} poems ({', '.join(missing[:10])})", file=sys.stderr)
    by_source: dict[str, list[tuple[int, int, str]]] = {}
    for number, e in key["poems"].items():
        if number in answers:
            by_source.setdefault(e["source"], []).append(answers[number])
    print(f"{folder.name}: {key['form']}, {len(answers)} answers\n")
    print("| source | poems | grammar | coherence | judged machine |")
    print("| --- | --- | --- | --- | --- |")
    for source, rows in sorted(by_source.items(), key=lambda kv: kv[0] != "real"):
        g = sum(r[0] for r in rows) / len(rows)
        c = sum(r[1] for r in rows) / len(rows)
        m = sum(r[2] == "M" for r in rows)
        print(f"| {source} | {len(rows)} | {g:.2f} | {c:.2f} | {m} / {len(rows)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="write a sheet and its key")
    mk.add_argument("--form", default="qijue", choices=sorted(FORMS))
    mk.add_argument("--per-source", type=int, default=24)
    mk.add_argument("--seed", type=int, default=1)
    mk.add_argument("--source", action="append", default=[], metavar="LABEL=ARGS",
                    help="a source: its label and the `poetgen sample` arguments it adds (repeat)")
    mk.add_argument("--split", default="val", choices=("val", "test"))
    mk.add_argument("-c", "--checkpoint", help="the model (default: the shipped one)")
    mk.add_argument("--data-dir", help="the prepared corpus (default: as poetgen finds it)")
    mk.add_argument("-o", "--output", required=True, help="the panel's folder")
    sc = sub.add_parser("score", help="score a judge's answers")
    sc.add_argument("folder")
    sc.add_argument("--answers", help="the answers file in the folder (default: answers.txt)")
    a = ap.parse_args()
    if a.command == "make":
        if not a.source:
            a.source = ["default="]
        make(a)
    else:
        score(a)


if __name__ == "__main__":
    main()
