"""Reader-side statistics of sampled poems against the real regulated poems of the test split.

For each fixed form: the plain model (--no-rhyme --best-of 1, what poetgen 0.1 printed), the default
settings, and --strict, each drawn as `poetgen sample` draws it (sample.Sampler: the checkpoint's
critic and usage weights, its 叠字 table, the int8 path unless --fp32); and the test split's real
poems of that form as the anchor. Prints one JSON line per row, then a table.

    python benchmarks/quality.py                 # 200 poems per form and setting, the shipped model
    python benchmarks/quality.py --poems 50 --checkpoint runs/x/best.pt

Measures: rhyme (the even lines' ends share one 平水韵 平声 group, no rhyme character twice); a
character used 3+ times (the second of a 叠字 pair not counted); any character used twice;
`poetgen check` passes; rare_reading warnings; two lines opening with the same two characters; mean
log-probability per character of the poems kept; seconds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from poetgen import checkpoint, corpus, prosody  # noqa: E402
from poetgen.forms import FORMS, detect  # noqa: E402
from poetgen.paths import resolve_data_dir  # noqa: E402
from poetgen.sample import (  # noqa: E402
    SampleOptions,
    Sampler,  # noqa: E402
    sample_request,
)
from poetgen.sample.request import SEARCHES  # noqa: E402
from poetgen.text import LINE_END  # noqa: E402


def uses(body: str) -> Counter:
    """Uses per character; the second of a 叠字 pair (萧萧) is not counted; marks left out."""
    out: Counter = Counter()
    line = ""
    for c in body:
        if c in LINE_END:
            line = ""
            continue
        if not (line and line[-1] == c and not (len(line) > 1 and line[-2] == c)):
            out[c] += 1
        line += c
    return out


def rhymes(body: str, rhyme_table) -> bool:
    lines = [x for x in body.replace("？", "。").replace("！", "。").replace("。", "，").split("，") if x]
    ends = [line[-1] for line in lines[1::2]]
    groups = [rhyme_table.of_char.get(c, set()) for c in ends]
    return bool(set.intersection(*groups)) and len(set(ends)) == len(ends)


def repeats_an_opening(body: str) -> bool:
    """Two lines start with the same two characters."""
    lines = [x for x in body.replace("？", "。").replace("！", "。").replace("。", "，").split("，") if x]
    openings = [line[:2] for line in lines]
    return len(set(openings)) < len(openings)


def measure(bodies: list[str], tones, rhyme_table) -> dict:
    n = len(bodies)
    checks = [prosody.check_poem(b, tones, rhyme_table) for b in bodies]
    return {
        "poems": n,
        "rhyme": round(sum(rhymes(b, rhyme_table) for b in bodies) / n, 3),
        "char_3plus": round(sum(max(uses(b).values()) >= 3 for b in bodies) / n, 3),
        "char_twice": round(sum(max(uses(b).values()) >= 2 for b in bodies) / n, 3),
        "check_pass": round(sum(r.ok for r in checks) / n, 3),
        "rare_reading": round(sum(bool(r.rare_reading) for r in checks) / n, 3),
        "opening_repeat": round(sum(repeats_an_opening(b) for b in bodies) / n, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model file (default: the shipped model)")
    ap.add_argument("--poems", type=int, default=200, help="poems per form and setting")
    ap.add_argument("--best-of", type=int, default=SampleOptions.best_of)
    ap.add_argument("--search", default=SampleOptions.search, choices=SEARCHES, help="how best-of-N searches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="prepared corpus for the real poems (default: as poetgen finds it)")
    ap.add_argument("--fp32", action="store_true", help="sample in full precision (as `sample --fp32`)")
    args = ap.parse_args()

    ckpt = checkpoint.load(args.checkpoint or checkpoint.default_checkpoint())
    tones = prosody.ToneTable.from_counts(ckpt.tones)
    rhyme_table = prosody.load_rhymes(ckpt.meta.script or "simplified")

    def generate(form: str, num: int, best_of: int, seed: int, mode: str | None) -> list:
        """Poems as `poetgen sample` makes them: the same request check, rules, critic and int8 path."""
        request = sample_request(form=form, num=num, seed=seed, best_of=best_of, no_rhyme=mode is None,
                                 strict=mode == "strict", search=args.search)
        sampler = Sampler(ckpt, request, int8=not args.fp32)
        gen, opts, verse = sampler.generator, sampler.options, sampler.rules
        return gen.generate(opts, verse=verse)

    real: dict[str, list[str]] = {f.name: [] for f in FORMS.values()}
    try:
        for poem in corpus.iter_poems(resolve_data_dir(args.data_dir), "test"):
            form = detect(poem.body)
            if form is not None:
                real[form.name].append(poem.body)
    except corpus.CorpusError as e:
        print(f"no real poems ({e})", file=sys.stderr)
    rows = []
    for form in FORMS.values():
        if real[form.name]:
            rows.append({"form": form.name, "setting": "real (test split)", **measure(real[form.name], tones,
                                                                                       rhyme_table)})
        settings = [("plain (--no-rhyme --best-of 1)", 1, None),
                    ("plain, best of N (--no-rhyme)", args.best_of, None),
                    ("default, best of 1", 1, "default"),
                    (f"default (best of {args.best_of})", args.best_of, "default"),
                    (f"--strict (best of {args.best_of})", args.best_of, "strict")]
        for name, best_of, mode in settings:
            t = time.perf_counter()
            poems = generate(form.key, args.poems, best_of, args.seed, mode)
            seconds = time.perf_counter() - t
            row = {"form": form.name, "setting": name, **measure([p.body for p in poems], tones, rhyme_table),
                   "logprob_per_char": round(sum(p.logprob / (len(p.body) + 1) for p in poems) / len(poems), 4),
                   "seconds": round(seconds, 2)}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    for n, form in ((1, "qilv"), (100, "qilv")):
        t = time.perf_counter()
        generate(form, n, args.best_of, args.seed, "default")
        print(json.dumps({"timing": f"{n} 七律, default settings (best of {args.best_of})",
                          "seconds": round(time.perf_counter() - t, 2)}, ensure_ascii=False), flush=True)
    keys = ("rhyme", "char_3plus", "char_twice", "check_pass", "rare_reading", "opening_repeat", "logprob_per_char")
    print("\n| form | setting | poems | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['form']} | {r['setting']} | {r['poems']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
