"""Fit the second-use weights (sample.masks.SECOND_USE_WEIGHT) to poets' rates, one form at a time, by
bisection: the weight of a character's second use for which the default settings' poems hold as many
distinct characters used twice as the train split's regulated poems do (benchmarks/repetition.py's
mean). The 叠字 weight is kept. Prints one JSON line per try and the fitted table.

    python tools/fit_second_use.py                       # 200 poems a form, seed 7001, 6 halvings
    python tools/fit_second_use.py --forms qilv --poems 100

The weights depend on the decoding (a search that ranks by likelihood repeats more): fit them again
when the defaults change, on a seed no panel uses."""

from __future__ import annotations

import argparse
import json
import math

from poetgen import checkpoint, corpus
from poetgen.forms import FORMS, detect
from poetgen.paths import resolve_data_dir
from poetgen.repetition import summarize
from poetgen.sample import Sampler, masks, sample_request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forms", nargs="+", default=list(masks.SECOND_USE_WEIGHT), choices=sorted(FORMS))
    ap.add_argument("--poems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7001)
    ap.add_argument("--halvings", type=int, default=6, help="bisection steps in log space")
    ap.add_argument("--data-dir", help="the prepared corpus (default: as poetgen finds it)")
    args = ap.parse_args()

    ckpt = checkpoint.load(checkpoint.default_checkpoint())
    real: dict[str, list[str]] = {key: [] for key in args.forms}
    for poem in corpus.iter_poems(resolve_data_dir(args.data_dir), "train"):
        form = detect(poem.body)
        if form is not None and form.key in real:
            real[form.key].append(poem.body)
    def rate(key: str, weight: float, target: float) -> float:
        """The mean repeated characters of the default settings' poems with this second-use weight."""
        masks.SECOND_USE_WEIGHT[key] = (weight, masks.SECOND_USE_WEIGHT[key][1])
        sampler = Sampler(ckpt, sample_request(form=key, num=args.poems, seed=args.seed))
        found = summarize(p.body for p in sampler.poems())
        print(json.dumps({"form": key, "weight": round(weight, 4), "mean_repeated": round(found.mean_repeated, 3),
                          "reduplication": round(found.reduplication, 3), "target": round(target, 3)}), flush=True)
        return found.mean_repeated

    fitted = dict(masks.SECOND_USE_WEIGHT)
    for key in args.forms:
        target = summarize(real[key]).mean_repeated
        doubled = masks.SECOND_USE_WEIGHT[key][1]
        low, high = math.log(0.002), math.log(0.5)  # the weight's range, in log space
        for _ in range(args.halvings):
            middle = (low + high) / 2
            if rate(key, math.exp(middle), target) > target:
                high = middle
            else:
                low = middle
        fitted[key] = (round(math.exp((low + high) / 2), 3), doubled)
        masks.SECOND_USE_WEIGHT[key] = fitted[key]
    print(json.dumps({"SECOND_USE_WEIGHT": fitted}))


if __name__ == "__main__":
    main()
