"""Negatives that teach a critic meaning rather than surface: real poems of the train split broken in
ways a reader notices and character statistics do not.

- swap: one line (not the first) replaced by the line at the same place of another poem of the form;
- shuffle: the poem's lines in another order (the marks stay where the form puts them).

Each poem gives one negative of each kind, as JSON lines of `poetgen sample --format jsonl`'s shape
(form, title, text), for `tools/train_critic.py --extra-negatives`. The text derives from the corpus
at run time: keep the output under runs/, never commit it.

    python tools/meaning_negatives.py --per-form 2000 -o runs/neg/meaning.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from poetgen import corpus
from poetgen.forms import FORMS, detect, split_lines
from poetgen.paths import atomic_write_text


def _punctuated(lines: list[str]) -> str:
    """Lines (marks dropped) with ， after odd lines and 。 after even ones, as a fixed form has them."""
    return "".join(line + ("，" if i % 2 == 0 else "。") for i, line in enumerate(lines))


def negatives(poems: list[tuple[str, str, str]], rng: random.Random) -> list[dict]:
    """One swap and one shuffle of each (form, title, body)."""
    by_form: dict[str, list[list[str]]] = {}
    for form, _, body in poems:
        by_form.setdefault(form, []).append([line[:-1] for line in split_lines(body)])
    out = []
    for form, title, body in poems:
        lines = [line[:-1] for line in split_lines(body)]
        other = rng.choice(by_form[form])
        at = rng.randrange(1, len(lines))
        swapped = lines[:at] + [other[at]] + lines[at + 1:]
        if swapped != lines:
            out.append({"form": form, "title": title, "text": _punctuated(swapped), "kind": "swap"})
        order = list(range(len(lines)))
        while order == sorted(order):
            rng.shuffle(order)
        out.append({"form": form, "title": title, "text": _punctuated([lines[i] for i in order]), "kind": "shuffle"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("corpus"))
    parser.add_argument("--per-form", type=int, default=2000, help="real train poems broken per form")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    chosen: dict[str, list] = {key: [] for key in FORMS}
    for poem in corpus.iter_poems(args.data_dir, "train"):
        form = detect(poem.body)
        if form is not None and len(chosen[form.key]) < args.per_form:
            chosen[form.key].append((form.key, poem.title, poem.body))
    rows = negatives([p for rows in chosen.values() for p in rows], rng)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(json.dumps({"negatives": len(rows), "per_form": {k: len(v) for k, v in chosen.items()}}))


if __name__ == "__main__":
    main()
