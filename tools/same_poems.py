"""Write the poems of a fixed set of sampling requests (CLI and API) into one file, so that two
versions of poetgen can be compared poem for poem: `python tools/same_poems.py OUT.jsonl`, then
`cmp` or `diff` two such files. A refactor must leave the file byte for byte the same."""

from __future__ import annotations

import json
import subprocess
import sys

REQUESTS = [  # (CLI arguments, how many poems); ~440 poems across forms and settings
    ("--form qilv --seed 11", 100),
    ("--form wujue --strict --seed 12", 60),
    ("--form qijue --temperature 0.6 --top-p 0.9 --best-of 4 --seed 13", 60),
    ("--form wulv --acrostic 春夏秋冬东南西北 --seed 14", 40),
    ("--seed 15 --max-chars 48", 30),
    ("--form qijue --no-prune --score logprob --seed 16", 40),
    ("--form wujue --no-rhyme --best-of 1 --top-k 20 --seed 17", 40),
    ("--form qilv --strict --rhyme 东 --title 送别 --seed 18", 20),
    ("--form qijue --prompt 春 --fp32 --seed 20", 20),
]
API = dict(form="qijue", num=30, seed=19, temperature=0.7)


def main(out: str) -> None:
    lines = []
    for args, num in REQUESTS:
        cmd = [sys.executable, "-m", "poetgen", "sample", *args.split(), "--num", str(num), "--format", "jsonl"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        for line in result.stdout.splitlines():
            record = json.loads(line)
            lines.append(json.dumps({"request": args, "title": record["title"], "poem": record["text"],
                                     "score": record["score"]}, ensure_ascii=False))
        print(f"{args}: {num} poems", file=sys.stderr)
    import poetgen

    for poem in poetgen.load().generate(**API):
        lines.append(json.dumps({"request": "api", "title": poem.title, "poem": poem.body,
                                 "score": round(poem.score, 4)}, ensure_ascii=False))
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} poems written to {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    main(sys.argv[1])
