"""Fit the usage table of a model's reranker, and write the model with it (poetgen/critic_fit.py, fit_usage).

Best-of-N picks the candidate of highest log-probability plus critic; the critic, taught on the
model's own samples, penalizes what those overuse, and picking by it overshoots: the picked poems hold
the words poets use every day (不 一 知 何 相) far less often than poets do. The usage table gives each
character that at least critic_fit.USAGE_MIN_SHARE of a form's real poems hold a weight, added to a
candidate's score when it holds the character, fitted so that the picked poems hold it as often as
the train split's poems of that form do.

The recipe, per form:
1. Pools: --pools poems drawn at the default settings (the model's own rules and critic), each with
   all its best-of-N candidates written to the end and their scores without usage (`--pools-dir`:
   JSONL, one pool a line, reused when there; seeds from --seed, apart from the benchmarks' seed 1).
   The fit models the pick among all of them, as `--no-prune` makes it; since poetgen 0.6 `sample`
   prunes as it goes (sample.CUTS), and the usage terms also rank the partial poems at its cuts.
2. Real shares: the share of the train split's poems of the form that hold each character.
3. Check: weights fitted on the first 3/4 of the pools, the held-out quarter's picked shares against
   the real ones (mean |log ratio| over the table's characters), before and after.
4. The weights fitted on all the pools go into the output checkpoint, beside the critic, for the
   forms whose held-out mismatch fell by at least --min-gain (5%); the others rank without usage.

    python tools/fit_usage.py -c checkpoints/poetgen-default.pt --pools-dir runs/usage -o runs/usage/model.pt

Progress and figures go to stderr; the last line on stdout is one JSON object of the figures."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from poetgen import checkpoint, corpus
from poetgen.critic_fit import USAGE_MIN_SHARE, chosen_shares, fit_usage, usage_shares
from poetgen.forms import FORMS, detect
from poetgen.rerank import Reranker, critic_logits
from poetgen.sample import Sampler, sample_request


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def draw_pools(ckpt, form: str, num: int, seed: int, path: Path) -> list[dict]:
    """`num` poems' candidate pools at the default settings, each {"title", "bodies", "lp", "z"} (mean
    log-probability and critic logit per candidate); read from `path` when it holds enough."""
    if path.exists():
        pools = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(pools) >= num:
            return pools[:num]
    sampler = Sampler(ckpt, sample_request(form=form, num=100, seed=seed), int8=True)
    generator, opts, verse = sampler.generator, sampler.options, sampler.rules
    best_of, critic = opts.candidates_per_poem, generator.reranker
    pools, started = [], time.time()
    for first in range(0, num, 100):
        candidates = generator.candidates(opts, best_of, verse=verse, first=first)
        z = critic_logits(critic.critic, critic.vocab, [c.body for c in candidates]).tolist()
        for p in range(len(candidates) // best_of):
            group = candidates[p * best_of:(p + 1) * best_of]
            pools.append({"title": group[0].title, "bodies": [c.body for c in group], "lp": [c.score for c in group],
                          "z": z[p * best_of:(p + 1) * best_of]})
        log(f"{form}: {len(pools)}/{num} pools, {time.time() - started:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pools), encoding="utf-8")
    return pools[:num]


def mismatch(picked: dict[str, float], real: dict[str, float], chars: list[str], floor: float) -> float:
    """Mean |log(picked share / real share)| over `chars` (shares floored at `floor`)."""
    return float(np.mean([abs(np.log(max(picked.get(c, 0.0), floor) / real[c])) for c in chars]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint", type=Path, required=True, help="a model with a critic")
    parser.add_argument("--data-dir", type=Path, default=Path("corpus"))
    parser.add_argument("--pools", type=int, default=1200, help="poems (pools of candidates) per form")
    parser.add_argument("--seed", type=int, default=7001)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--pools-dir", type=Path, default=Path("runs/usage"),
                        help="where pools are kept, named by the checkpoint file's hash (reused for the same file)")
    parser.add_argument("--min-gain", type=float, default=0.05,
                        help="keep a form's table only if it cuts the held-out mismatch by this fraction")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    forms = args.forms.split(",")
    if any(f not in FORMS for f in forms):
        parser.error(f"--forms takes form keys among {', '.join(FORMS)}")

    ckpt = checkpoint.load(args.checkpoint)
    fingerprint = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()[:12]
    reranker = ckpt.reranker()
    if reranker is None:
        raise SystemExit(f"{args.checkpoint} has no critic: train one first (tools/train_critic.py)")
    real_bodies: dict[str, list[str]] = {key: [] for key in FORMS}
    for poem in corpus.iter_poems(args.data_dir, "train"):
        form = detect(poem.body)
        if form is not None:
            real_bodies[form.key].append(poem.body)
    usage, figures = dict(reranker.usage), {}
    for form in forms:
        cache = args.pools_dir / f"{form}-n{args.pools}-s{args.seed}-{fingerprint}.jsonl"
        pools = draw_pools(ckpt, form, args.pools, args.seed, cache)
        scored = [(p["bodies"], [lp + reranker.weight * z for lp, z in zip(p["lp"], p["z"], strict=True)])
                  for p in pools]
        real = usage_shares(real_bodies[form])
        chars = sorted((c for c, share in real.items() if share >= USAGE_MIN_SHARE), key=lambda c: (-real[c], c))
        cut = len(scored) * 3 // 4
        held_out, floor = scored[cut:], 1 / (2 * (len(scored) - cut))
        trial = fit_usage(scored[:cut], real)
        before = mismatch(chosen_shares(held_out, {}), real, chars, floor)
        after = mismatch(chosen_shares(held_out, trial), real, chars, floor)
        kept = before - after >= args.min_gain * before
        if kept:
            usage[form] = fit_usage(scored, real)
        else:  # within the noise of the held-out pools: the form ranks without usage
            usage.pop(form, None)
        picked_before, picked_after = chosen_shares(held_out, {}), chosen_shares(held_out, trial)
        figures[form] = {"characters": len(chars), "real_poems": len(real_bodies[form]), "pools": len(scored),
                         "held_out_mismatch_before": round(before, 3), "held_out_mismatch_after": round(after, 3),
                         "kept": kept,
                         "examples": {c: [round(real[c], 3), round(picked_before.get(c, 0.0), 3),
                                          round(picked_after.get(c, 0.0), 3)] for c in chars[:8]}}
        log(f"{form}: {len(chars)} characters; held-out mismatch {before:.3f} → {after:.3f}, "
            f"{'kept' if kept else f'not kept (under {args.min_gain:.0%} better)'} "
            f"(share real / picked before / after: "
            + ", ".join(f"{c} {v[0]:.2f}/{v[1]:.2f}/{v[2]:.2f}" for c, v in figures[form]["examples"].items()) + ")")
    figures = {**reranker.figures.get("usage", {}), **figures}  # forms not fitted now keep theirs
    out = Reranker(reranker.critic, ckpt.vocab, reranker.weight, {**reranker.figures, "usage": figures}, usage)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.attach_critic(args.checkpoint, args.output, out.to_payload())
    log(f"wrote {args.output}")
    print(json.dumps(figures, ensure_ascii=False))


if __name__ == "__main__":
    main()
