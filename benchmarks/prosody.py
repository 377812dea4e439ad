"""格律 pass rates with and without --strict, and what the constraint costs in log-probability.

    python benchmarks/prosody.py                      # the shipped model, 200 poems per form
    python benchmarks/prosody.py --checkpoint runs/x/best.pt --poems 100

For each form: the share of poems that pass `poetgen check`, and that pass the independent 粘对
checker (benchmarks/independent_checker.py), sampled plainly and with --strict, and the mean
per-character log-probability of those poems under the unconstrained model. Prints JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from independent_checker import independent_check  # noqa: E402

from poetgen import checkpoint, prosody  # noqa: E402
from poetgen.forms import FORMS  # noqa: E402
from poetgen.sample import Generator, SampleOptions  # noqa: E402
from poetgen.sample.masks import ProsodyMasks, verse_rules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model file (default: the shipped model)")
    ap.add_argument("--poems", type=int, default=200, help="poems per form and mode")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    path = args.checkpoint or checkpoint.default_checkpoint()
    ckpt = checkpoint.load(path)
    model, vocab = ckpt.model, ckpt.vocab
    tones = prosody.ToneTable.from_counts(ckpt.tones)
    rhymes = prosody.load_rhymes(ckpt.meta.script or "simplified")
    masks = ProsodyMasks(vocab, tones, rhymes)
    gen = Generator(model, vocab)
    for key, form in FORMS.items():
        for strict in (False, True):
            opts = SampleOptions(form=form, num=args.poems, seed=args.seed, temperature=args.temperature,
                                 best_of=1)
            rules = verse_rules(opts, masks, strict=True) if strict else None
            t = time.perf_counter()
            poems = gen.generate(opts, verse=rules)
            seconds = time.perf_counter() - t
            passed = sum(prosody.check_poem(p.body, tones, rhymes).ok for p in poems)
            independent = sum(independent_check(p.body, tones, rhymes) for p in poems)
            chars = sum(len(p.body) + 1 for p in poems)  # +1: the end token
            print(json.dumps({
                "form": form.name, "key": key, "strict": strict, "poems": len(poems),
                "pass_rate": round(passed / len(poems), 4),
                "independent_pass_rate": round(independent / len(poems), 4),
                "mean_logprob_per_char": round(sum(p.logprob for p in poems) / chars, 4),
                "seconds": round(seconds, 2),
            }, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
