"""Does a model read its plan? Body perplexity of val poems written after their title alone, after
title and plan, after title and poet, and after all three (the plan by poetgen.plan's rule, the poet
where the model's records name them).

    python benchmarks/plan_ppl.py -c runs/NAME/best.pt [--poems 400] [--data-dir DIR]

A model that uses its plan writes the body with a much lower perplexity when the plan is given; the
plain figure is what `poetgen eval --split val` reports (on all val poems, not just these)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from poetgen import checkpoint, corpus
from poetgen.evaluate import evaluate_stream
from poetgen.paths import resolve_data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--checkpoint", required=True)
    ap.add_argument("--poems", type=int, default=400)
    ap.add_argument("--data-dir")
    a = ap.parse_args()
    ckpt = checkpoint.load(a.checkpoint)
    vocab, poets = ckpt.vocab, ckpt.meta.poets or {}
    if not vocab.plans:
        raise SystemExit(f"{a.checkpoint} has no plan markers: its records carry no plan")
    data_dir = resolve_data_dir(Path(a.data_dir) if a.data_dir else None)
    poems = [p for p in corpus.iter_poems(data_dir, "val") if len(p.plan or []) <= 8][: a.poems]
    named = sum(p.author in poets for p in poems)
    print(f"{len(poems)} val poems of at most 8 lines, {named} by poets the model knows")
    for label, with_plan, with_poet in (("title", False, False), ("title + plan", True, False),
                                        ("title + poet", False, True), ("title + poet + plan", True, True)):
        ids: list[int] = []
        for p in poems:
            author = p.author if with_poet and p.author in poets else ""
            ids += vocab.encode_record(p.title, p.body, author, p.plan if with_plan else None)
        r = evaluate_stream(ckpt.model, np.asarray(ids, dtype=np.int64), vocab)
        print(f"{label:>20}: body perplexity {r['body']['perplexity']:.2f} ({r['body_chars']:,} characters)")


if __name__ == "__main__":
    main()
