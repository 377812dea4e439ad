"""Make the critic of best-of-N reranking for a model, and write the model with it (poetgen/rerank.py).

The recipe of the shipped critic:
1. Negatives: candidates the model draws at the default settings, one per poem (best of 1), per form:
       poetgen sample --form wujue --num 5000 --best-of 1 --seed 3000 --format jsonl -o runs/neg/wujue.jsonl
   (and qijue, wulv, qilv). The last --val-negatives of each form's files are held out for val.
2. Positives: real poems of the four forms from the corpus's train split (and, with --song N, up to
   N poems of the 全宋诗 the corpus holds beside it).
3. The critic trains for --epochs; the epoch of best val AUC (val-split real poems against held-out
   negatives) is kept.
4. The weight of the critic beside the mean log-probability is chosen on val: the one that best ranks
   real val poems above held-out negatives, per form (critic_fit.choose_weight).
5. The output is the checkpoint as it was, plus the critic and its figures (written atomically).

    python tools/train_critic.py -c checkpoints/poetgen-default.pt --negatives runs/neg/*.jsonl \\
        -o runs/critic/poetgen-default.pt

Progress and figures go to stderr; the last line on stdout is one JSON object of the figures."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from poetgen import checkpoint, corpus
from poetgen.critic_fit import choose_weight, fit, record_logprobs
from poetgen.forms import FORMS, detect
from poetgen.rerank import Reranker, critic_logits


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def real_poems(data_dir: Path, split: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(form, title, body) of a split's poems of the four regulated forms."""
    out = []
    for poem in corpus.iter_poems(data_dir, split):
        form = detect(poem.body)
        if form is not None:
            out.append((form.key, poem.title, poem.body))
            if limit is not None and len(out) >= limit:
                break
    return out


def generated(paths: list[Path], held_out: int) -> tuple[list, list]:
    """(form, title, body) of sampled JSONL records: (training part, the last `held_out` of each form)."""
    by_form: dict[str, list] = {key: [] for key in FORMS}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if record.get("form") in by_form:
                    by_form[record["form"]].append((record["form"], record["title"], record["text"]))
    train, val = [], []
    for rows in by_form.values():
        cut = max(0, len(rows) - held_out)
        train += rows[:cut]
        val += rows[cut:]
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint", type=Path, required=True, help="the model the critic is for")
    parser.add_argument("--negatives", type=Path, nargs="+", required=True,
                        help="JSONL of candidates drawn at the default settings (poetgen sample --format jsonl)")
    parser.add_argument("--extra-negatives", type=Path, nargs="*", default=[],
                        help="more JSONL candidates, for training only (e.g. drawn at older settings)")
    parser.add_argument("--val-negatives", type=int, default=1000, help="held-out candidates per form, for val")
    parser.add_argument("--data-dir", type=Path, default=Path("corpus"))
    parser.add_argument("--song", type=int, default=40000, help="real 全宋诗 poems added to the positives (0: none)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    started = time.time()
    ckpt = checkpoint.load(args.checkpoint)
    vocab = ckpt.vocab
    neg_train, neg_val = generated(args.negatives, args.val_negatives)
    neg_train += generated(args.extra_negatives, 0)[0]
    pos_train = real_poems(args.data_dir, "train")
    if args.song:
        song = [(p.title, p.body) for p in corpus.iter_poems(args.data_dir, "song") if detect(p.body) is not None]
        random.Random(args.seed).shuffle(song)
        pos_train += [("song", t, b) for t, b in song[:args.song]]
    pos_val = real_poems(args.data_dir, "val")
    log(f"train: {len(pos_train)} real, {len(neg_train)} generated; val: {len(pos_val)} real, {len(neg_val)} generated")

    train = ([b for _, _, b in pos_train] + [b for _, _, b in neg_train], [1] * len(pos_train) + [0] * len(neg_train))
    val_rows = pos_val + neg_val
    val = ([b for _, _, b in val_rows], [1] * len(pos_val) + [0] * len(neg_val))
    critic, figures = fit(vocab, train, val, epochs=args.epochs, seed=args.seed,
                          on_epoch=lambda e, loss, a: log(f"epoch {e}: train loss {loss:.4f}, val AUC {a:.4f}"))
    log(f"kept epoch {figures['epoch']} (val AUC {figures['val_auc']}), {time.time() - started:.0f} s")

    log(f"log-probabilities of {len(val_rows)} val poems under the model …")
    lp = np.array(record_logprobs(ckpt.model, vocab, [(t, b) for _, t, b in val_rows]))
    z = critic_logits(critic, vocab, val[0]).numpy()
    labels, groups = np.array(val[1]), np.array([f for f, _, _ in val_rows])
    weight, table = choose_weight(lp, z, labels, groups)
    log(f"val AUC (real over generated, mean over forms) by critic weight: {table}; chosen {weight}")
    figures.update({"weight_auc": table, "weight": weight, "train_real": len(pos_train),
                    "train_generated": len(neg_train), "val_real": len(pos_val), "val_generated": len(neg_val),
                    "per_form_val_auc": {
                        f: {"logprob": round(float(_auc(lp, labels, groups, f)), 4),
                            "critic": round(float(_auc(z, labels, groups, f)), 4),
                            "both": round(float(_auc(lp + weight * z, labels, groups, f)), 4)}
                        for f in FORMS}})
    reranker = Reranker(critic, vocab, weight, {k: v for k, v in figures.items() if k != "history"})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.attach_critic(args.checkpoint, args.output, reranker.to_payload())
    log(f"wrote {args.output} in {time.time() - started:.0f} s")
    print(json.dumps(figures, ensure_ascii=False))


def _auc(scores, labels, groups, form):
    from poetgen.critic_fit import auc

    keep = groups == form
    return auc(scores[keep], labels[keep])


if __name__ == "__main__":
    main()
